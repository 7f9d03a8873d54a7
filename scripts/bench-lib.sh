#!/usr/bin/env bash
# Helpers shared by the benchmark scripts (sourced, not run).

# A TCP port free on 127.0.0.1 now. A fixed port can be held by a server an earlier run left
# behind, which then answers in place of the one under test.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# User and system CPU of process $1 so far, as "user system", in clock ticks (getconf
# CLK_TCK per second). The fields are counted after the `(comm)`, which may hold spaces.
cpu_ticks_split() {
  awk '{ sub(/.*\) /, ""); split($0, f, " "); print f[12], f[13] }' "/proc/$1/stat"
}

# User plus system CPU of process $1 so far, in clock ticks.
cpu_ticks() {
  local user system
  read -r user system < <(cpu_ticks_split "$1")
  echo $((user + system))
}

# On-CPU time in ns (user and system, from schedstat) of process $1's threads whose name
# starts with $2: `threads_cpu_ns "$server" xenios-http` is the CPU of the threads that serve
# HTTP, without the background writers.
threads_cpu_ns() {
  local t name total=0
  for t in /proc/"$1"/task/*; do
    read -r name < "$t/comm" 2>/dev/null || continue
    case $name in "$2"*) total=$((total + $(cut -d' ' -f1 "$t/schedstat" 2>/dev/null || echo 0))) ;; esac
  done
  echo "$total"
}
