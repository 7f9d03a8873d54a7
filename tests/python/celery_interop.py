"""Real Celery on the side of the interoperability tests (tests/tests/jobs_interop.rs).

The broker and result backend are both XENIOS_TEST_BROKER (the test's own Redis DB).

- As a Celery app module: `python -m celery -A celery_interop worker -Q pyq ...` runs the
  Python tasks below; `... flower` serves Flower on the same broker.
- As a script: `python celery_interop.py send <task> <queue> <args-json> <timeout>` sends a
  task the way a Python producer does and prints `{"result": ...}` or `{"error": ...}` from
  `AsyncResult.get()`.
- `python celery_interop.py restore` runs kombu's own restore of unacked messages (what a
  Python worker does every 10 s) with a visibility timeout of 0, so that everything unacked
  goes back to its queue, and prints `{"unacked": n}`, what is left.
- `python celery_interop.py control <worker-hostname>` drives that worker with Celery's own
  remote control (terminate, time_limit, rate_limit, then shutdown) and prints what it saw
  as one JSON object.
"""

import json
import os
import sys
import time

from celery import Celery

BROKER = os.environ.get("XENIOS_TEST_BROKER", "redis://127.0.0.1:6379/0")

app = Celery("celery_interop", broker=BROKER, backend=BROKER)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="interop.add")
def add(x, y):
    return x + y


@app.task(name="interop.noop")
def noop():
    return None


@app.task(name="interop.headers", bind=True)
def headers(self):
    """What a Python task sees of the headers our producer adds."""
    return {
        "correlation_id": self.request.get("xenios_correlation_id"),
        "retries": self.request.retries,
        "delivery_info": self.request.delivery_info.get("routing_key"),
    }


def send(task, queue, args_json, timeout):
    args = json.loads(args_json)
    result = app.send_task(task, args=args, queue=queue)
    try:
        value = result.get(timeout=float(timeout))
        print(json.dumps({"id": result.id, "result": value}))
    except Exception as exc:  # the exception Celery rebuilt from our stored failure
        print(json.dumps({"id": result.id, "error": type(exc).__name__, "message": str(exc)}))


def outcome(result, timeout=30):
    """State and exception name of a finished task, as a Python caller sees them."""
    try:
        result.get(timeout=timeout)
        return {"state": result.state}
    except Exception as exc:
        return {"state": result.state, "error": type(exc).__name__, "message": str(exc)}


def control(host):
    dest = [host]
    out = {}
    # revoke(terminate=True) of a running task: wait until the worker reports it active.
    long = app.send_task("xenios.sleep", kwargs={"seconds": 60}, queue="default")
    deadline = time.monotonic() + 30
    active = []
    while time.monotonic() < deadline and not active:
        replies = app.control.inspect(dest, timeout=1.0).active() or {}
        active = [t["id"] for t in replies.get(host, []) if t["id"] == long.id]
    out["active_before_terminate"] = bool(active)
    started = time.monotonic()
    out["terminate_reply"] = app.control.revoke(
        long.id, terminate=True, signal="SIGKILL", destination=dest, reply=True, timeout=5
    )
    out["terminated"] = outcome(long)
    out["terminate_secs"] = time.monotonic() - started
    # time_limit: the task's new soft limit stops a sleep that would run 60 s.
    out["time_limit_reply"] = app.control.time_limit(
        "xenios.sleep", soft=0.3, hard=5, destination=dest, reply=True, timeout=5
    )
    out["time_limit_unknown"] = app.control.time_limit(
        "no.such.task", soft=1, destination=dest, reply=True, timeout=5
    )
    limited = app.send_task("xenios.sleep", kwargs={"seconds": 60}, queue="default")
    out["time_limited"] = outcome(limited)
    # rate_limit: 2/s spaces four no-ops at least 1.5 s apart (first to last, less slack).
    out["rate_limit_reply"] = app.control.rate_limit(
        "xenios.noop", "2/s", destination=dest, reply=True, timeout=5
    )
    out["rate_limit_bad"] = app.control.rate_limit(
        "xenios.noop", "fast", destination=dest, reply=True, timeout=5
    )
    noops = [app.send_task("xenios.noop", queue="default") for _ in range(4)]
    for r in noops:
        r.get(timeout=30)
    done = sorted(r.date_done.timestamp() for r in noops)
    out["rate_limited_span_secs"] = done[-1] - done[0]
    out["rate_limit_off"] = app.control.rate_limit(
        "xenios.noop", 0, destination=dest, reply=True, timeout=5
    )
    # shutdown: the worker stops warmly (no reply is expected, as with Celery's workers).
    app.control.shutdown(destination=dest)
    print(json.dumps(out))


def restore():
    with app.connection_for_read(transport_options={"visibility_timeout": 0}) as conn:
        channel = conn.default_channel
        channel.qos.restore_visible(num=1000)
        print(json.dumps({"unacked": channel.client.hlen(channel.unacked_key)}))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "send":
        send(*sys.argv[2:])
    elif len(sys.argv) == 2 and sys.argv[1] == "restore":
        restore()
    elif len(sys.argv) == 3 and sys.argv[1] == "control":
        control(sys.argv[2])
    else:
        sys.exit(
            "usage: celery_interop.py send <task> <queue> <args-json> <timeout>\n"
            "       celery_interop.py restore\n"
            "       celery_interop.py control <worker-hostname>"
        )
