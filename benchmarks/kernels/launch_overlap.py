"""The captured 13B decode step with overlapping launches (``worker.kernels.launch``) and with plain ones.

    python -m benchmarks.kernels.launch_overlap [--batches 1 8 32] [--rounds 3]   # Hopper or later

For each batch the step (40 layers, attention window 1,024, rows 900 tokens in, as ``tune_in_step`` times it)
is captured with plain launches, then with overlapping ones, alternately, each time timed as the best of two
runs of 20 replays. Both must decode the same greedy tokens: from the same inputs, 8 steps in a row, every row's
token compared (a launch that read before the kernel before had written would change them).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import torch

from benchmarks.kernels.tune_in_step import POSITION, WINDOW, step_ms
from benchmarks.result_json import write_result
from benchmarks.synthetic_checkpoint import XWIN_13B, write_synthetic_checkpoint
from worker.inference.llama_runtime import LlamaRuntime
from worker.kernels import launch
from worker.model.loader import load_model

STEPS = 8


def greedy_tokens(runtime: LlamaRuntime, batch: int) -> torch.Tensor:
    """[STEPS, batch]: the captured step (as now captured) replayed from the same first tokens and positions."""
    graph = runtime.graphs.get(batch, WINDOW)
    runtime.step_input[0, :batch] = torch.arange(batch, device=runtime.device) * 7 + 11
    runtime.step_input[1, :batch].fill_(POSITION)
    return torch.stack([graph.replay().clone() for _ in range(STEPS)]).cpu()


def compare(runtime: LlamaRuntime, batch: int, rounds: int) -> dict:
    times: dict[str, list[float]] = {"plain": [], "overlapping": []}
    tokens, shipped = {}, launch.OVERLAP
    try:
        for _ in range(rounds):
            for name, on in (("plain", False), ("overlapping", True)):
                launch.OVERLAP = on
                times[name].append(step_ms(runtime, batch))
                tokens[name] = greedy_tokens(runtime, batch)
    finally:
        launch.OVERLAP = shipped
    same = float((tokens["plain"] == tokens["overlapping"]).float().mean())
    print(f"batch {batch}: step {min(times['plain']):.3f} ms plain, {min(times['overlapping']):.3f} overlapping "
          f"(best of {rounds}: {times}); greedy tokens the same: {same:.1%}", flush=True)
    return dict(times=times, same_tokens=same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not launch.overlap(torch.device("cuda"), 1).get("launch_pdl"):
        raise SystemExit("overlapping launches need Hopper or later and a Triton with griddepcontrol")
    path = write_synthetic_checkpoint(Path(tempfile.mkdtemp(dir="/dev/shm")) / "ckpt", XWIN_13B)
    loaded = load_model(path, device="cuda")
    report = {"device": torch.cuda.get_device_name()}
    for batch in args.batches:
        runtime = LlamaRuntime(loaded.model, 2048, max_batch=batch, cuda_graphs=True)
        runtime.sampling.rows[0].zero_()  # temperature 0: greedy, so both launches' tokens can be compared
        report[f"batch_{batch}"] = compare(runtime, batch, args.rounds)
        del runtime
        gc.collect()  # the runtime's graphs sit in reference cycles
        torch.cuda.empty_cache()
    write_result("launch_overlap", report)


if __name__ == "__main__":
    main()
