"""Real Celery on the side of the interoperability tests (tests/tests/jobs_interop.rs).

The broker and result backend are both XENIOS_TEST_BROKER (the test's own Redis DB).

- As a Celery app module: `python -m celery -A celery_interop worker -Q pyq ...` runs the
  Python tasks below; `... flower` serves Flower on the same broker.
- As a script: `python celery_interop.py send <task> <queue> <args-json> <timeout>` sends a
  task the way a Python producer does and prints `{"result": ...}` or `{"error": ...}` from
  `AsyncResult.get()`.
"""

import json
import os
import sys

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


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "send":
        send(*sys.argv[2:])
    else:
        sys.exit("usage: celery_interop.py send <task> <queue> <args-json> <timeout>")
