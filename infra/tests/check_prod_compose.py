#!/usr/bin/env python3
"""Assert the production properties of a rendered compose file (infra/tests/check.sh).

Usage: check_prod_compose.py RENDERED_COMPOSE RESOLVED_JSON ENV_FILE EXPECTED_IMAGE KIND

RENDERED_COMPOSE is the app role's output; RESOLVED_JSON is `docker-compose config --format
json` of it (anchors merged, ${} from .env interpolated). KIND is the host kind: `all` (in
the inventory groups api and workers, own redis) or `workers` (worker-only, shared Redis).
Prints one line per failed property and exits 1 if any failed.
"""

import json
import os
import re
import stat
import sys

import yaml

SERVICES = {
    "all": {"api", "worker", "redis", "flower"},
    "workers": {"worker"},
}
APP_SERVICES = {"api", "worker"}
WORKER_QUEUES = {
    "worker": ["-Q", "default,llm", "-c", "4"],
}
# No Rust handler serves these queues: a Rust worker must never consume them.
NO_RUST_QUEUES = {"extraction", "transcription"}
UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def to_bytes(value):
    """Compose memory value ("8G", "512M", 8589934592) in bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", str(value).strip().lower())
    if not match:
        raise ValueError(f"not a memory size: {value!r}")
    return int(float(match.group(1)) * UNITS[match.group(2)])


def read_env(path):
    """The rendered .env as a dict (values are single-quoted)."""
    values = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if "=" in line and not line.startswith("#"):
                name, value = line.rstrip("\n").split("=", 1)
                values[name] = value.strip("'")
    return values


def seconds(value):
    """Compose duration ("2m0s", "120s", "1m30s") in seconds."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", str(value)):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


def main(rendered_path, resolved_path, env_path, expected_image, kind):
    failures = []

    def check(ok, message):
        if not ok:
            failures.append(message)

    with open(rendered_path, encoding="utf-8") as handle:
        rendered = yaml.safe_load(handle)
    with open(resolved_path, encoding="utf-8") as handle:
        resolved = json.load(handle)
    services = resolved.get("services", {})
    env = read_env(env_path)
    own_redis = kind == "all"

    check(set(services) == SERVICES[kind], f"services are {sorted(services)}, want {sorted(SERVICES[kind])}")
    check("build" not in json.dumps(rendered.get("services", {})), "production compose must not build images")

    for name, svc in services.items():
        check(svc.get("restart") == "unless-stopped", f"{name}: restart is {svc.get('restart')!r}, want unless-stopped")
        resources = (svc.get("deploy") or {}).get("resources") or {}
        for block_kind in ("limits", "reservations"):
            block = resources.get(block_kind) or {}
            check(block.get("memory") is not None, f"{name}: no memory {block_kind}")
            check(block.get("cpus") not in (None, "", 0), f"{name}: no cpus {block_kind}")
        limits, reservations = resources.get("limits") or {}, resources.get("reservations") or {}
        if limits.get("memory") is not None and reservations.get("memory") is not None:
            check(to_bytes(reservations["memory"]) <= to_bytes(limits["memory"]),
                  f"{name}: memory reservation above the limit")
        for port in svc.get("ports") or []:
            check(port.get("host_ip") == "127.0.0.1",
                  f"{name}: port {port.get('published')}->{port.get('target')} bound to {port.get('host_ip') or '0.0.0.0'}, want 127.0.0.1")
        image = svc.get("image", "")
        check(bool(re.fullmatch(r"[^:@\s]+(:[\w][\w.-]*)", image)) and not image.endswith(":latest"),
              f"{name}: image {image!r} is not pinned to a tag")
        if name in APP_SERVICES:
            check(image == expected_image, f"{name}: image {image!r}, want {expected_image!r}")
        waits = (svc.get("depends_on") or {}).get("redis", {}).get("condition") == "service_healthy"
        if name != "redis" and own_redis:
            check(waits, f"{name}: does not wait for a healthy redis")
        if not own_redis:
            check("redis" not in (svc.get("depends_on") or {}), f"{name}: depends on a redis service on a worker-only host")
        command = svc.get("command") or []
        if command[:1] == ["xenios-worker"] and "-Q" in command:
            queues = set(command[command.index("-Q") + 1].split(","))
            check(not queues & NO_RUST_QUEUES, f"{name}: a Rust worker consumes {sorted(queues & NO_RUST_QUEUES)}, which no Rust handler serves")

    for name, args in WORKER_QUEUES.items():
        svc = services.get(name, {})
        command = svc.get("command") or []
        check(command[:1] == ["xenios-worker"] and command[1:] == args, f"{name}: command {command}, want xenios-worker {' '.join(args)}")
        worker_env = svc.get("environment") or {}
        check(worker_env.get("RUN_MIGRATIONS") == "false", f"{name}: must not run migrations")
        check((svc.get("healthcheck") or {}).get("test") == ["CMD", "xenios-worker", "--check"],
              f"{name}: healthcheck is {(svc.get('healthcheck') or {}).get('test')}, want xenios-worker --check")
        grace = seconds(svc.get("stop_grace_period") or "10s")
        check(grace == 120, f"{name}: stop_grace_period is {svc.get('stop_grace_period')!r}, want 120s")
        deadline = worker_env.get("WORKER_SHUTDOWN_TIMEOUT_SECS")
        check(deadline == "100" and int(deadline) < grace,
              f"{name}: WORKER_SHUTDOWN_TIMEOUT_SECS is {deadline!r}, want 100 (below the grace period)")

    if kind == "workers":
        check(re.match(r"rediss?://", env.get("REDIS_URL", "")) is not None and "@redis:" not in env.get("REDIS_URL", ""),
              "worker-only host: REDIS_URL is not the shared Redis")
        mode = stat.S_IMODE(os.stat(env_path).st_mode)
        check(mode == 0o600, f".env mode is {mode:04o}, want 0600")
        for failure in failures:
            print(f"  FAIL {failure}")
        return 1 if failures else 0

    api = services.get("api", {})
    check(api.get("command") == ["xenios-server"], f"api: command {api.get('command')}")
    check([p.get("target") for p in api.get("ports") or []] == [8000], "api: must publish container port 8000")
    check("/health" in json.dumps((api.get("healthcheck") or {}).get("test")), "api: healthcheck must probe /health")

    redis_cmd = services.get("redis", {}).get("command") or []
    joined = " ".join(str(part) for part in redis_cmd)
    check("--appendonly yes" in joined, f"redis: AOF not enabled ({joined!r})")
    check("--appendfsync" in joined, "redis: appendfsync not set")
    check("--requirepass" in joined, "redis: no password")
    check(any(v.get("target") == "/data" and v.get("type") == "volume" for v in services.get("redis", {}).get("volumes") or []),
          "redis: /data is not a named volume")
    check(bool((services.get("redis", {}).get("healthcheck") or {}).get("test")), "redis: no healthcheck")

    flower = services.get("flower", {})
    flower_env = flower.get("environment") or {}
    check(re.fullmatch(r"[^:\s]+:\S{12,}", flower_env.get("FLOWER_BASIC_AUTH") or "") is not None,
          "flower: FLOWER_BASIC_AUTH (user:password, 12+ character password) missing")
    check((flower_env.get("CELERY_BROKER_URL") or "").startswith("redis://") and "@redis:6379" in flower_env.get("CELERY_BROKER_URL", ""),
          "flower: broker is not the stack's redis")

    mode = stat.S_IMODE(os.stat(env_path).st_mode)
    check(mode == 0o600, f".env mode is {mode:04o}, want 0600")

    for failure in failures:
        print(f"  FAIL {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[5] not in SERVICES:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
