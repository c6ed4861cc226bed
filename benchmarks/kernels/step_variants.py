"""The captured 13B decode step timed under a few variants of the worker's kernels, alternately in one process,
with the greedy tokens of every variant compared to the first's (``launch_overlap``, ``small_kernel_blocks``,
``silu_epilogue``, ``attention_launch_next``).

Each variant is a function that sets the switches it needs; the step is captured again after it (``tune_in_step``'s
``step_ms``: 40 layers, rows 900 tokens in, attention window 1,024, or each of ``positions`` in its window) and
timed as the best of two runs of 20 replays. The tokens: from the same first tokens, 8 steps in a row, every row's
token (a kernel that read too early, or summed the wrong columns, would change them).
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.kernels.tune_in_step import POSITION, step_ms
from benchmarks.synthetic_checkpoint import XWIN_13B, write_synthetic_checkpoint
from worker.inference.llama_runtime import LlamaRuntime
from worker.kernels import launch
from worker.model.loader import load_model

STEPS = 8


def require_overlapping_launches() -> None:
    """Exit with the reason where one-row kernels cannot launch overlapping (``worker.kernels.launch``)."""
    if not launch.overlap(torch.device("cuda"), 1).get("launch_pdl"):
        raise SystemExit("overlapping launches need Hopper or later and a Triton with griddepcontrol")


def greedy_tokens(runtime: LlamaRuntime, batch: int) -> torch.Tensor:
    """[STEPS, batch]: the captured step (as now captured) replayed from the same first tokens and positions."""
    graph = runtime.graphs.get(batch, runtime.window_for(POSITION + 1))
    runtime.step_input[0, :batch] = torch.arange(batch, device=runtime.device) * 7 + 11
    runtime.step_input[1, :batch].fill_(POSITION)
    return torch.stack([graph.replay().clone() for _ in range(STEPS)]).cpu()


def compare(runtime: LlamaRuntime, batch: int, rounds: int, variants: dict[str, Callable[[], None]],
            positions: tuple[int, ...] = (POSITION,)) -> dict:
    """Each variant's step times at each position (``rounds`` each, alternating) and the share of its greedy
    tokens equal to the first variant's. The caller restores the switches afterwards."""
    times = {position: {name: [] for name in variants} for position in positions}
    tokens = {}
    for _ in range(rounds):
        for position in positions:
            for name, apply in variants.items():
                apply()
                times[position][name].append(step_ms(runtime, batch, (position,)))
                tokens[name] = greedy_tokens(runtime, batch)
    first = next(iter(variants))
    same = {name: float((tokens[name] == tokens[first]).float().mean()) for name in variants}
    for position, by_name in times.items():
        best = ", ".join(f"{name} {min(ms):.3f}" for name, ms in by_name.items())
        print(f"batch {batch}, {position} tokens in: step ms (best of {rounds}) {best} ({by_name})", flush=True)
    print(f"batch {batch}: greedy tokens as {first}'s: {same}", flush=True)
    return dict(times=times, same_tokens=same)


def each_batch(batches: list[int], rounds: int, variants: dict[str, Callable[[], None]],
               positions: tuple[int, ...] = (POSITION,)) -> dict:
    """``compare`` on a synthetic 13B checkpoint for each batch, a runtime of its own each, greedy sampling."""
    path = write_synthetic_checkpoint(Path(tempfile.mkdtemp(dir="/dev/shm")) / "ckpt", XWIN_13B)
    loaded = load_model(path, device="cuda")
    report = {"device": torch.cuda.get_device_name(), "positions": positions}
    for batch in batches:
        runtime = LlamaRuntime(loaded.model, 2048, max_batch=batch, cuda_graphs=True)
        runtime.sampling.rows[0].zero_()  # temperature 0: greedy, so the variants' tokens can be compared
        report[f"batch_{batch}"] = compare(runtime, batch, rounds, variants, positions)
        del runtime
        gc.collect()  # the runtime's graphs sit in reference cycles
        torch.cuda.empty_cache()
    return report


def each_value(module, name: str, values: dict[str, object], batches: list[int], rounds: int) -> dict:
    """``each_batch`` with one module-level switch (``module.name``) set to each of ``values`` (label -> value) in
    turn, and put back as it was afterwards."""
    shipped = getattr(module, name)

    def setting(value):
        return lambda: setattr(module, name, value)

    try:
        return each_batch(batches, rounds, {label: setting(value) for label, value in values.items()})
    finally:
        setattr(module, name, shipped)
