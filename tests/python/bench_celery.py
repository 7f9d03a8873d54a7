"""Celery's side of scripts/bench-jobs.sh, on the same Redis and with the same rules as ours
(xenios-worker/examples/bench.rs):

- enqueue: one producer, one `send_task` per job, each call finished before the next;
- drain: for each pool, the worker is started and has finished a warm-up task before the clock
  starts; the N jobs wait in a staging list that is RENAMEd onto the worker's queue when the
  clock starts (the last job is sent normally, which also wakes a blocked BRPOP); the clock
  stops when every one of the N results is stored (`celery-task-meta-<id>`), not when the queue
  is empty (Celery acks early, before the result is written).
- Redis commands per job during the drain, from INFO commandstats (the benchmark's own
  EXISTS/INFO/RENAME polling excluded).

Prints `RESULT key=value` lines that scripts/bench-jobs.sh turns into ratios.

usage: bench_celery.py <jobs>   (XENIOS_TEST_BROKER = the Redis DB it may flush)
"""

import collections
import os
import subprocess
import sys
import time

import redis

from celery_interop import BROKER, app

QUEUE = "celerybench"
STAGING = "celerybench-staging"
# The benchmark's own commands, left out of the per-job counts. It polls results with STRLEN,
# which no worker uses, so that a worker's own EXISTS calls are counted.
OWN_COMMANDS = {"strlen", "info", "rename", "flushdb", "llen", "hlen", "dbsize"}
# Fewest and most results checked at once when the oldest missing one is stored (see
# wait_results).
POLL_WINDOW = (16, 256)
# Pools tried; the best one is Celery's figure. prefork -c 2 is one process per core here.
POOLS = (("solo", "1"), ("threads", "8"), ("prefork", "2"), ("prefork", "4"))
# Task events as on our side (BENCH_TASK_EVENTS=1: `-E`, as for Flower); off by default.
EVENTS = ["-E"] if os.environ.get("BENCH_TASK_EVENTS") in ("1", "true") else []


def commandstats(r):
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}


def commands_per_job(before, after, n):
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after if k not in OWN_COMMANDS}
    calls = {k: v for k, v in calls.items() if v > 0}
    top = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:6])
    return sum(calls.values()) / n, top


def wait_results(r, ids, deadline):
    """Waits until every result is stored. While the oldest missing one is not, only it is
    checked (every 2 ms); once it is, the next ones are checked at once: twice as many as
    the last window found (within POLL_WINDOW). Workers finish roughly in order, so the
    window follows the drain's pace and polling costs a few commands per job and does not
    load Redis in proportion to N (as bench.rs does it)."""
    # A deque: each poll takes its window off the front and puts back what is still missing,
    # without copying the other ids (as bench.rs does it).
    missing = collections.deque(ids)
    size = POLL_WINDOW[0]
    while missing:
        if time.monotonic() > deadline:
            raise SystemExit(f"celery: {len(missing)} results missing at the deadline")
        if not r.strlen(f"celery-task-meta-{missing[0]}"):
            time.sleep(0.002)
            continue
        window = [missing.popleft() for _ in range(min(size, len(missing)))]
        pipe = r.pipeline(transaction=False)
        for task_id in window:
            pipe.strlen(f"celery-task-meta-{task_id}")
        sizes = pipe.execute()
        missing.extendleft(t for t, n in reversed(list(zip(window, sizes))) if not n)
        size = min(max(2 * sum(1 for n in sizes if n), POLL_WINDOW[0]), POLL_WINDOW[1])


def drain(r, n, pool, conc, extra=()):
    r.flushdb()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_interop", "worker", "-Q", QUEUE,
         "-P", pool, "-c", conc, "-n", f"bench-{pool}-{conc}@%h", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "-l", "error", *EVENTS, *extra],
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    try:
        # Started and consuming before the clock: a warm-up task round trip.
        app.send_task("interop.noop", queue=QUEUE).get(timeout=120)
        ids = [app.send_task("interop.noop", queue=STAGING).id for _ in range(n - 1)]
        before = commandstats(r)
        start = time.perf_counter()
        r.rename(STAGING, QUEUE)
        ids.append(app.send_task("interop.noop", queue=QUEUE).id)
        wait_results(r, ids, time.monotonic() + 600)
        secs = time.perf_counter() - start
        per_job, top = commands_per_job(before, commandstats(r), n)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return n / secs, secs, per_job, top


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    r = redis.Redis.from_url(BROKER)
    r.flushdb()
    start = time.perf_counter()
    for _ in range(n):
        app.send_task("interop.noop", queue=STAGING)
    secs = time.perf_counter() - start
    print(f"celery enqueue (send_task, one call per job, 1 producer): {n / secs:.0f} jobs/s ({n} jobs)")
    print(f"RESULT celery_enqueue={n / secs:.1f}")
    best = (0.0, *POOLS[0])
    for pool, conc in POOLS:
        rate, secs, per_job, top = drain(r, n, pool, conc)
        name = f"{pool} -c {conc}"
        print(f"celery drain ({name}, no-op, results stored): {rate:.0f} jobs/s "
              f"({n} jobs in {secs:.2f} s; {per_job:.1f} Redis commands/job: {top})")
        if rate > best[0]:
            best = (rate, pool, conc)
    rate, pool, conc = best
    print(f"celery best drain: {rate:.0f} jobs/s ({pool} -c {conc})")
    print(f"RESULT celery_drain={rate:.1f}")
    # Shown apart, not compared, as on our side: the best pool with a larger prefetch window.
    rate, secs, per_job, top = drain(r, n, pool, conc, ["--prefetch-multiplier", "16"])
    print(f"celery drain, shown apart, at --prefetch-multiplier 16 ({pool} -c {conc}): {rate:.0f} jobs/s "
          f"({n} jobs in {secs:.2f} s)")
    print(f"RESULT celery_drain_prefetch16={rate:.1f}")
    r.flushdb()


if __name__ == "__main__":
    main()
