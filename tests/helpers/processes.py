"""xwinbot's own processes (``worker``, ``slack``, ``up`` …) started by tests as real subprocesses, and their memory.

``settings_env(**values)`` turns settings into the ``XWINBOT_*`` environment a process reads; ``running(...)``
starts ``python -m worker.cli <command>`` with it and kills it (``SIGKILL``) on exit, whatever the test did.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from pydantic_settings import NoDecode

from tests.helpers.paths import REPO
from worker.settings import Settings


def settings_env(**values) -> dict[str, str]:
    """``XWINBOT_<NAME>`` for every setting given (secrets as their plain text)."""
    env = {}
    for name, value in values.items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"XWINBOT_{name.upper()}"] = env_text(name, value)
    return env


def env_text(name: str, value) -> str:
    """A setting's value as its environment variable holds it: a list comma-separated where the setting says so
    (NoDecode), else as JSON, which pydantic-settings decodes."""
    if not isinstance(value, (list, tuple)):
        return str(value)
    field = Settings.model_fields.get(name)
    if field is not None and any(isinstance(rule, NoDecode) for rule in field.metadata):
        return ",".join(map(str, value))
    return json.dumps(list(value), ensure_ascii=False)


def spawn(command: list[str], env_extra: dict, module: str = "worker.cli", **popen_kwargs) -> subprocess.Popen:
    """``xwinbot <command>`` as a child process, with this environment plus ``env_extra``. It is killed when
    the test process dies, even by ``kill -9`` (a timed-out CI run leaves no worker behind). ``module``: another
    entry point that ends in ``worker.cli`` (e.g. one that first points discord.py at a fake's gateway)."""
    env = {**os.environ, **{key: str(value) for key, value in env_extra.items()}}
    return subprocess.Popen([sys.executable, "-m", module, *command], cwd=REPO, env=env,
                            preexec_fn=die_with_parent, **popen_kwargs)


def die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGKILL when the process that started it ends."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kill(process: subprocess.Popen | None) -> None:
    """``kill -9`` and reap (nothing if it already ended)."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)


@contextmanager
def running(command: list[str], env_extra: dict, **popen_kwargs):
    process = spawn(command, env_extra, **popen_kwargs)
    try:
        yield process
    finally:
        kill(process)


def memory_mb(pid: int) -> dict[str, float]:
    """The process's resident memory now (``rss``) and its peak so far (``peak``), in MB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB
    return {"rss": fields["VmRSS"], "peak": fields["VmHWM"]}
