"""``xwinbot worker --gpus all|N|0,2,3``: one ordinary worker process per GPU, each seeing only its own GPU.

The parent never touches CUDA beyond counting the GPUs. Each child is ``python -m worker.cli worker`` with
``CUDA_VISIBLE_DEVICES`` set to one GPU (so it serves on ``cuda:0``) and its own ``/metrics`` port (the
parent's ``XWINBOT_METRICS_PORT`` + the child's position). The parent forwards SIGINT/SIGTERM to every child
and waits for them (answers in progress finish first), restarts a child that dies, with a backoff that doubles
while it keeps dying soon after starting (jittered, so children that died together do not restart together),
and exits 0 once every child has stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from redis.backoff import EqualJitterBackoff

log = logging.getLogger(__name__)

CHILD_COMMAND = (sys.executable, "-m", "worker.cli", "worker")


def visible_gpu_count() -> int:
    """How many GPUs this process may use (honours CUDA_VISIBLE_DEVICES); no CUDA context is created."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_gpus(spec: str, count: int, visible: str | None = None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each child, from ``--gpus``: ``all``, a number N (the first N), or
    indices ``0,2,3``. Indices count the GPUs this process sees: under ``CUDA_VISIBLE_DEVICES=4,5`` index 1 is
    GPU 5 (or its UUID, as given)."""
    if count <= 0:
        raise ValueError(f"--gpus {spec}: no GPU is visible (torch sees none; CUDA_VISIBLE_DEVICES="
                         f"{visible if visible is not None else 'unset'}); run `xwinbot worker` without --gpus "
                         "for one CPU worker")
    ids = [item.strip() for item in visible.split(",") if item.strip()] if visible else []
    ids = ids[:count] if ids else [str(index) for index in range(count)]
    spec = spec.strip().lower()
    if spec == "all":
        return ids
    if spec.isdigit():
        wanted = int(spec)
        if not 1 <= wanted <= len(ids):
            raise ValueError(f"--gpus {spec}: between 1 and {len(ids)} (the GPUs visible here)")
        return ids[:wanted]
    try:
        indices = [int(item) for item in spec.split(",")]
    except ValueError:
        raise ValueError(f"--gpus {spec}: give all, a number, or GPU indices like 0,2,3") from None
    if len(set(indices)) != len(indices) or not all(0 <= index < len(ids) for index in indices):
        raise ValueError(f"--gpus {spec}: indices must be distinct, from 0 to {len(ids) - 1}")
    return [ids[index] for index in indices]


def die_with_parent() -> None:
    """In a child, before exec (Linux): SIGTERM when the parent dies, so no worker is left holding a GPU."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class GpuWorkers:
    """Runs and supervises one child per device; ``run()`` returns when told to stop (``stop()`` or a signal)."""

    def __init__(self, devices: Sequence[str], command: Sequence[str] = CHILD_COMMAND, metrics_port: int = 9400,
                 env: dict[str, str] | None = None, backoff_s: tuple[float, float] = (1.0, 60.0),
                 stable_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.devices = list(devices)
        self.command = list(command)
        self.metrics_port = metrics_port
        self.env = dict(os.environ if env is None else env)
        first_backoff, max_backoff = backoff_s
        # the n-th quick death in a row waits between half and all of first * 2^(n-1), capped at max
        self.restart_backoff = EqualJitterBackoff(cap=max_backoff, base=first_backoff / 2)
        self.stable_s = stable_s
        self.clock = clock
        self.children: list[subprocess.Popen | None] = [None] * len(self.devices)
        self.started_at = [0.0] * len(self.devices)
        self.backoff = [0.0] * len(self.devices)  # the wait before each child's latest restart
        self.quick_deaths = [0] * len(self.devices)  # in a row, each within stable_s of its start
        self.restart_at: list[float | None] = [None] * len(self.devices)
        self.restarts = [0] * len(self.devices)
        self.stop_signal: int | None = None

    def child_env(self, position: int) -> dict[str, str]:
        env = {**self.env, "CUDA_VISIBLE_DEVICES": self.devices[position], "XWINBOT_GPU_WORKER": str(position)}
        env["XWINBOT_METRICS_PORT"] = str(self.metrics_port + position if self.metrics_port else 0)
        return env

    def start_child(self, position: int) -> None:
        self.children[position] = subprocess.Popen(self.command, env=self.child_env(position),
                                                   start_new_session=True, preexec_fn=die_with_parent)
        self.started_at[position] = self.clock()
        self.restart_at[position] = None
        log.info("worker %d on GPU %s: pid %d", position, self.devices[position], self.children[position].pid)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Ask every child to stop (they finish their answers); ``run()`` returns when all have."""
        self.stop_signal = sig

    def _check(self, position: int) -> None:
        child = self.children[position]
        now = self.clock()
        if child is not None and child.poll() is not None:
            lived = now - self.started_at[position]
            quick = lived < self.stable_s
            self.quick_deaths[position] = self.quick_deaths[position] + 1 if quick else 1
            self.backoff[position] = self.restart_backoff.compute(self.quick_deaths[position])
            log.warning("worker %d on GPU %s exited with %s after %.0f s; restarting in %.0f s", position,
                        self.devices[position], child.returncode, lived, self.backoff[position])
            self.children[position] = None
            self.restart_at[position] = now + self.backoff[position]
        if self.children[position] is None and self.restart_at[position] is not None \
                and now >= self.restart_at[position]:
            self.restarts[position] += 1
            self.start_child(position)

    def run(self, poll_s: float = 0.2, handle_signals: bool = True) -> int:
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda number, _frame: self.stop(number))
        for position in range(len(self.devices)):
            self.start_child(position)
        print(f"xwinbot: {len(self.devices)} workers, one per GPU ({', '.join(self.devices)}); "
              "Ctrl-C stops them all", flush=True)
        while self.stop_signal is None:
            for position in range(len(self.devices)):
                self._check(position)
            time.sleep(poll_s)
        print("xwinbot: stopping the workers…", flush=True)
        running = [child for child in self.children if child is not None and child.poll() is None]
        for child in running:
            child.send_signal(self.stop_signal)
        for child in running:
            child.wait()
        return 0
