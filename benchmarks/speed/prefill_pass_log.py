"""Every prefill pass a runtime runs, timed on the host: how long Python took to enqueue the pass's kernels (eager
passes only; a captured pass is one replay), and how long until its first tokens were read back (its wall time).

A pass whose enqueue time is near its wall time was bound by the host (launches, waits for the GIL), not by the
GPU. ``queue_e2e`` logs the passes of a 32-user burst this way; ``prefill_passes`` times the same shapes in a
quiet process, so the two say how much of the burst's prefill time is spent around the passes.
"""

from __future__ import annotations

import statistics
import time

from worker.inference import llama_runtime


class PrefillPassLog:
    """Wraps ``runtime.prefill_prompts`` (and, for the enqueue time, ``llama_runtime.prefill``, which it calls)."""

    def __init__(self, runtime):
        self.passes: list[dict] = []
        self._enqueued_at: float | None = None
        self._wrap_prefill()
        self._wrap_prefill_prompts(runtime)

    def _wrap_prefill(self) -> None:
        original = llama_runtime.prefill

        def timed(*args, **kwargs):
            token = original(*args, **kwargs)  # kernels enqueued, nothing read back yet
            self._enqueued_at = time.perf_counter()
            return token

        llama_runtime.prefill = timed

    def _wrap_prefill_prompts(self, runtime) -> None:
        original = runtime.prefill_prompts

        def timed(first_slot, prompts, start=0):
            self._enqueued_at = None
            began = time.perf_counter()
            tokens = original(first_slot, prompts, start)
            ended = time.perf_counter()
            enqueued = None if self._enqueued_at is None else (self._enqueued_at - began) * 1000
            self.passes.append(dict(prompts=len(prompts), longest=max(len(p) for p in prompts),
                                    enqueue_ms=enqueued, wall_ms=(ended - began) * 1000))
            return tokens

        runtime.prefill_prompts = timed

    def clear(self) -> None:
        self.passes.clear()

    def summary(self) -> dict:
        """By (prompts, longest prompt in tens of tokens): passes, median enqueue and wall ms; and the totals."""
        groups: dict[str, list[dict]] = {}
        for one in self.passes:
            groups.setdefault(f"{one['prompts']}x{one['longest'] // 10 * 10}", []).append(one)
        def enqueued(rows: list[dict]) -> list[float]:
            return [r["enqueue_ms"] for r in rows if r["enqueue_ms"] is not None]

        by_shape = {key: dict(passes=len(rows), wall_ms_median=statistics.median(r["wall_ms"] for r in rows),
                              enqueue_ms_median=statistics.median(enqueued(rows)) if enqueued(rows) else None)
                    for key, rows in sorted(groups.items(), key=lambda item: -len(item[1]))}
        return dict(passes=len(self.passes), eager_passes=len(enqueued(self.passes)),
                    eager_enqueue_s=sum(enqueued(self.passes)) / 1000,
                    wall_s=sum(r["wall_ms"] for r in self.passes) / 1000, by_shape=by_shape)
