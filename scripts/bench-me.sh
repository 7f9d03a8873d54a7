#!/usr/bin/env bash
# Requests/s of an authenticated `GET /api/v1/me` (X-API-Key plus an HS256 Supabase bearer
# token, so every request verifies a JWT and passes the rate limiter) against a release
# build, with wrk, on 127.0.0.1 only, as a ratio of a static nginx reply measured by the
# same wrk settings in the same run (absolute figures drift between days on these machines).
# Only 2xx answers count. Starts Postgres/Redis if needed,
# starts the server on BENCH_PORT (default: a free port), runs wrk for a bounded time, prints the figures and stops
# the server (also on failure or Ctrl-C).
#
#   scripts/bench-me.sh                 # 15 s, 64 connections, 2 wrk threads
#   DURATION=30 CONNECTIONS=128 scripts/bench-me.sh
#   LOG_LEVEL=warn scripts/bench-me.sh  # without the per-request access log line
#   BENCH_NO_BUILD=1 scripts/bench-me.sh # reuse target/release/xenios-server as it is
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/toolchain.sh
source scripts/bench-lib.sh

DURATION=${DURATION:-15}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
BENCH_PORT=${BENCH_PORT:-$(free_port)}
API_KEY=bench-api-key-0123456789abcdef
JWT_SECRET=bench-jwt-secret-with-at-least-32-characters
ISSUER_BASE=http://127.0.0.1:9   # only used as the expected `iss`; HS256 needs no JWKS fetch

if ! command -v wrk >/dev/null || ! [ -x /usr/sbin/nginx ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
fi
scripts/services.sh --dev-db >/dev/null
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --bin xenios-server

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
payload=$(printf '{"iss":"%s/auth/v1","aud":"authenticated","sub":"8d3f0c9e-1f0b-4c4e-9a59-0c1d2e3f4a5b","exp":%d,"iat":%d,"role":"authenticated","email":"coach@example.com","session_id":"0f6b9f8e-7a2c-4d0e-8b1a-2c3d4e5f6a7b","aal":"aal1","is_anonymous":false}' \
  "$ISSUER_BASE" $((now + 3600)) "$now" | b64url)
signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -hmac "$JWT_SECRET" -binary | b64url)
TOKEN="$header.$payload.$signature"

log=$(mktemp -t xenios-bench-XXXXXX.log)
ENVIRONMENT=development HOST=127.0.0.1 PORT=$BENCH_PORT \
  XENIOS_BACKEND_API_KEY=$API_KEY SUPABASE_URL=$ISSUER_BASE SUPABASE_JWT_SECRET=$JWT_SECRET \
  RATE_LIMIT_PER_MINUTE=1000000000 RATE_LIMIT_BURST=100000000 \
  LOG_LEVEL=${LOG_LEVEL:-info} LOG_FORMAT=${LOG_FORMAT:-json} \
  DATABASE_URL=${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/xenios} \
  target/release/xenios-server >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -f "$log"' EXIT

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$BENCH_PORT/health" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
url="http://127.0.0.1:$BENCH_PORT/api/v1/me"
check=$(curl -sS -H "X-API-Key: $API_KEY" -H "Authorization: Bearer $TOKEN" "$url")
echo "GET /api/v1/me -> $check"
case $check in *'"principal":"user"'*) ;; *) echo "the token was not accepted"; exit 1;; esac

# The peer: nginx serving a static JSON reply of the same size, on its own port.
NGINX_PORT=${NGINX_PORT:-$(free_port)}
ngx=$(mktemp -d -t xenios-bench-nginx-XXXXXX)
printf '%s' "$check" > "$ngx/me.json"
cat > "$ngx/nginx.conf" <<NGINX
worker_processes auto;
pid $ngx/nginx.pid;
error_log $ngx/error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $ngx; proxy_temp_path $ngx; fastcgi_temp_path $ngx;
  uwsgi_temp_path $ngx; scgi_temp_path $ngx;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location = /me.json { default_type application/json; alias $ngx/me.json; }
  }
}
NGINX
/usr/sbin/nginx -c "$ngx/nginx.conf" -g 'daemon on;'
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -f "$log"; kill "$(cat "$ngx/nginx.pid" 2>/dev/null)" 2>/dev/null; rm -rf "$ngx"' EXIT
for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:$NGINX_PORT/me.json" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_PORT/me.json" || { echo "nginx does not serve the peer reply"; exit 1; }

# wrk against $1; prints its report and sets ok_rate to the 2xx answers per second.
run_wrk() {
  local out requests non2xx
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -H "X-API-Key: $API_KEY" -H "Authorization: Bearer $TOKEN" "$1")
  echo "$out"
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  non2xx=$(echo "$out" | awk '/Non-2xx or 3xx responses/ {print $NF}')
  ok_rate=$(awk -v r="$requests" -v e="${non2xx:-0}" -v d="$DURATION" 'BEGIN { printf "%.0f", (r - e) / d }')
  echo "2xx answers: $((requests - ${non2xx:-0})) of $requests = $ok_rate/s"
  ok_requests=$((requests - ${non2xx:-0}))
}

echo "wrk: ${DURATION}s, $CONNECTIONS connections, $THREADS threads, LOG_LEVEL=${LOG_LEVEL:-info}"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
echo "== static nginx reply"
run_wrk "http://127.0.0.1:$NGINX_PORT/me.json"
nginx_rate=$ok_rate
[ "$nginx_rate" -gt 0 ] || { echo "the nginx peer answered no 2xx: no ratio can be given"; exit 1; }
echo "== xenios-server GET /api/v1/me"
# CPU time the server itself spends (utime + stime, in clock ticks): requests per server
# CPU-second is a figure that survives a machine shared with other work.
ticks_before=$(cpu_ticks "$server")
run_wrk "$url"
ticks_after=$(cpu_ticks "$server")
hz=$(getconf CLK_TCK)
awk -v n="$ok_requests" -v t=$((ticks_after - ticks_before)) -v hz="$hz" 'BEGIN {
  s = t / hz; if (s > 0) printf "server CPU: %.2f s for %d 2xx answers = %.0f per server CPU-second\n", s, n, n / s }'
echo "server RSS after the run: $(ps -o rss= -p "$server" | awk '{printf "%.1f MB", $1/1024}')"
awk -v a="$ok_rate" -v b="$nginx_rate" 'BEGIN { printf "ratio: authenticated /api/v1/me = %.1f%% of a static nginx reply (%d vs %d 2xx/s)\n", 100 * a / b, a, b }'
