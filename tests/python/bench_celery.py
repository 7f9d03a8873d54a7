"""Celery's side of scripts/bench-jobs.sh, on the same Redis: enqueue rate of one producer
(send_task per job, as Celery apps do) and drain rate of no-op tasks by one worker with each
pool (solo, threads -c 16, prefork -c 4). Prints one line per figure.

usage: bench_celery.py <jobs>   (XENIOS_TEST_BROKER = the Redis DB it may flush)
"""

import os
import subprocess
import sys
import time

import redis

from celery_interop import BROKER, app

QUEUE = "celerybench"


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    r = redis.Redis.from_url(BROKER)
    r.flushdb()
    noop = app.signature("interop.noop")
    start = time.perf_counter()
    for _ in range(n):
        app.send_task("interop.noop", queue=QUEUE)
    secs = time.perf_counter() - start
    print(f"celery enqueue (send_task, 1 producer): {n / secs:.0f} jobs/s ({n} jobs)")
    del noop
    best = 0.0
    for pool, conc in (("solo", "1"), ("threads", "16"), ("prefork", "4")):
        r.flushdb()
        for _ in range(n):
            app.send_task("interop.noop", queue=QUEUE)
        start = time.perf_counter()
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_interop", "worker", "-Q", QUEUE,
             "-P", pool, "-c", conc, "-n", f"bench-{pool}@%h", "--without-gossip",
             "--without-mingle", "-l", "error"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
        try:
            while r.llen(QUEUE) or r.hlen("unacked"):
                time.sleep(0.005)
            secs = time.perf_counter() - start
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        rate = n / secs
        best = max(best, rate)
        print(f"celery drain ({pool} -c {conc}, no-op, results stored): {rate:.0f} jobs/s ({n} jobs in {secs:.2f} s)")
    print(f"celery best drain: {best:.0f} jobs/s")


if __name__ == "__main__":
    main()
