"""Prefill passes of the shapes a 32-user burst runs (1, 8 and 32 prompts of 64 tokens; 1 and 8 of 500), timed
on the host (``prefill_pass_log``): the time Python takes to enqueue a pass's kernels against the pass's wall
time, eager and replayed from a captured graph (``worker.inference.prefill_graph``; shapes past its row limit
run eagerly in both), in a quiet process and with busy Python threads beside it (32 threads each running 2% of
the time: 64% of one core, as the worker's job threads might during a burst).

An eager pass makes a few thousand PyTorch and Triton calls, and each call gives the GIL up and takes it back:
with other threads wanting it, every call can wait up to the switch interval (the worker's 0.5 ms).
``queue_e2e``'s pass log gives the same figures inside the real burst.

    python -m benchmarks.speed.prefill_passes     # ~1.5 min on an H200 (13B shape); JSON into $OUT when set
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.result_json import write_result
from benchmarks.speed.prefill_pass_log import PrefillPassLog
from benchmarks.synthetic_checkpoint import SHAPES, write_synthetic_checkpoint
from worker.inference.llama_runtime import LlamaRuntime
from worker.model.loader import load_model
from worker.serve import GIL_SWITCH_INTERVAL_S

SHAPES_RUN = ((1, 64), (8, 64), (32, 64), (1, 500), (8, 500))  # (prompts, tokens each)
RUNS = {  # label: (captured graphs, busy threads, the share of each millisecond they run Python)
    "eager, quiet": (False, 0, 0.0), "graphs, quiet": (True, 0, 0.0),
    "graphs, 32 threads 2% busy": (True, 32, 0.02), "eager, 32 threads 2% busy": (False, 32, 0.02)}


class BusyThreads:
    """``count`` threads each running pure Python ``duty`` of each millisecond and sleeping the rest."""

    def __init__(self, count: int, duty: float):
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(duty,), daemon=True) for _ in range(count)]

    def _run(self, duty: float) -> None:
        while not self.stop.is_set():
            until = time.perf_counter() + duty / 1000
            while time.perf_counter() < until:
                sum(range(50))
            time.sleep((1 - duty) / 1000)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join()


def time_shapes(runtime: LlamaRuntime, log: PrefillPassLog, repeats: int) -> dict:
    rows = {}
    for prompts, length in SHAPES_RUN:
        group = [[3 + (7 * i + p) % 30000 for i in range(length)] for p in range(prompts)]
        runtime.prefill_prompts(0, group)  # compiles and first-call work outside the timing
        log.clear()
        for _ in range(repeats):
            runtime.prefill_prompts(0, group)
        summary = log.summary()
        eager = summary["eager_passes"]
        rows[f"{prompts}x{length}"] = one = dict(
            enqueue_ms=summary["eager_enqueue_s"] * 1000 / eager if eager else None,
            wall_ms=summary["wall_s"] * 1000 / repeats, tok_s=prompts * length / summary["wall_s"] * repeats)
        enqueue = f"enqueue {one['enqueue_ms']:7.1f} ms" if eager else "captured         "
        print(f"  {prompts:2d} x {length:3d} tokens: {enqueue}, wall {one['wall_ms']:7.1f} ms "
              f"({one['tok_s']:,.0f} tok/s)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="xwin13b")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as the worker sets it
    path = write_synthetic_checkpoint(Path(tempfile.mkdtemp(dir="/dev/shm")) / "ckpt", SHAPES[args.shape])
    loaded = load_model(path, device="cuda")
    runtime = LlamaRuntime(loaded.model, 2048, max_batch=32, cuda_graphs=True)
    started = time.perf_counter()
    runtime.prefill_graphs.capture_all()
    print(f"captured {len(runtime.prefill_graphs.captured)} prefill passes in {time.perf_counter() - started:.1f} s",
          flush=True)
    captured = runtime.prefill_graphs
    log = PrefillPassLog(runtime)
    report = {"device": torch.cuda.get_device_name(), "shape": args.shape, "switch_interval_s": GIL_SWITCH_INTERVAL_S}
    for label, (graphs, count, duty) in RUNS.items():
        print(f"{label}:", flush=True)
        runtime.prefill_graphs = captured if graphs else None
        with BusyThreads(count, duty):
            report[label] = time_shapes(runtime, log, args.repeats)
    write_result("prefill_passes", report)


if __name__ == "__main__":
    main()
