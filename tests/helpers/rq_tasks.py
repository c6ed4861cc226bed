"""Task functions for tests/test_rq_workers.py, importable by dotted path (``rq_tasks.<fn>``) in worker threads
and worker processes (PYTHONPATH must hold the tests/ directory)."""

from __future__ import annotations

import json
import os
import threading
import time

from rq import get_current_job


def _record(key: str, **extra) -> None:
    job = get_current_job()
    entry = {"job": job.id, "pid": os.getpid(), "thread": threading.get_ident(), "t": time.time(), **extra}
    job.connection.rpush(key, json.dumps(entry))


def slow_echo(arg: dict):
    """Record a start in ``<key>:started``, sleep ``arg['sleep']`` s, record ``<key>:done``, return ``arg['value']``."""
    _record(arg["key"] + ":started")
    time.sleep(float(arg.get("sleep", 0)))
    _record(arg["key"] + ":done")
    return arg.get("value")


def boom(arg: dict):
    """Record an attempt in ``<key>:attempts``, then raise."""
    _record(arg["key"] + ":attempts")
    raise ValueError(f"boom: {arg.get('msg', 'failure')}")
