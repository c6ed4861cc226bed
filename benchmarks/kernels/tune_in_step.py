"""Tune the int4 kernel configs where they run: inside the whole captured 13B decode step.

A kernel timed alone sees neither the layers around it nor the epilogue that adds its split-K partial sums,
and a config that wins there can lose in the step. Here each candidate config
of one layer shape replaces the current one, the decode step (40 layers, rows 900 tokens in: attention window
1,024) is captured again and replayed; shape by shape, the fastest step keeps its config. With ``--positions``
the step is timed at each of those positions (each in its window) and their mean decides: a config's gain can
hang on how long the conversation is (NOTES row 100).

    python -m benchmarks.kernels.tune_in_step [--batches 1 32 16] [--seconds 360] [--kernels gemv]
    # writes the table (all GPUs' entries kept) to $OUT/w4a16_configs.json, or worker/ with --write
    python -m benchmarks.kernels.tune_in_step --against old_configs.json [--batches 32 1] [--positions 100 600]
    # tunes nothing: the step with this GPU's configs from that table, then with the shipped ones, three times
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.kernels.int4_kernels import SHAPES, copy_warps_configs, k_splits, replay_ms
from benchmarks.result_json import write_result
from benchmarks.synthetic_checkpoint import XWIN_13B, write_synthetic_checkpoint
from worker.inference.llama_runtime import LlamaRuntime
from worker.kernels import w4a16 as w4a16_kernels
from worker.model.loader import load_model

POSITION = 900  # rows 900 tokens in: the attention window of 1,024


def step_ms(runtime: LlamaRuntime, batch: int, positions: tuple[int, ...] = (POSITION,)) -> float:
    """The decode step of ``batch`` rows, captured with the configs now in the table: its mean over ``positions``
    (the rows' tokens in), each replayed in the attention window the runtime picks for it."""
    w4a16_kernels.config_for_bucket.cache_clear()
    runtime.graphs.clear()
    times = []
    for position in positions:
        graph = runtime.graphs.get(batch, runtime.window_for(position + 1))
        runtime.step_input[1, :batch].fill_(position)
        replay_ms(graph, 5)
        times.append(min(replay_ms(graph, 20) for _ in range(2)))
    return sum(times) / len(times)


def candidates(rows: int, k: int, n: int, sms: int, device: torch.device):
    """Configs to time for a rows bucket (group 128): the kernels that may serve it, tiles, warps and K splits."""
    bucket = w4a16_kernels.rows_bucket(rows)
    kernel = w4a16_kernels.kernel_for(bucket, 128)
    if kernel == "gemv":
        # K blocks loaded as each starts (num_stages 1): copied ahead, the step lost 16% on every layer and won or
        # lost a few % on one by conversation length (NOTES row 100), at three times the configs to time
        tiles = [(bn, bk, warps, 1) for bn in (32, 64, 128) for bk in (256, 512) for warps in (2, 4, 8)]
    else:
        tiles = [(bn, 128, warps, 3) for bn in (64, 128) for warps in (4, 8)]
    for block_n, block_k, warps, stages in tiles:
        k_blocks = k // block_k
        for split in k_splits(k_blocks, -(-n // block_n), sms):
            yield from w4a16_kernels.with_one_dot(dict(kernel=kernel, BLOCK_M=bucket, BLOCK_N=block_n,
                                                       BLOCK_K=block_k, split=split, num_warps=warps,
                                                       num_stages=stages))
    if "copy_warps" in w4a16_kernels.served_kernels(bucket, 128, device):
        yield from copy_warps_configs(bucket, k, n, sms)


def worth_timing(config: dict, out_features: int, sms: int) -> bool:
    """Enough programs to fill the GPU, not so many that each does almost nothing."""
    programs = -(-out_features // config["BLOCK_N"]) * config["split"]
    return sms <= programs <= 12 * sms


def with_shares(items, deadline: float):
    """Each item with its own deadline: an even share of the time left when its turn comes (a short budget used to
    leave the last items untimed)."""
    for left, item in zip(range(len(items), 0, -1), items):
        yield item, time.monotonic() + (deadline - time.monotonic()) / left


def tune_batch(runtime: LlamaRuntime, batch: int, table: dict, deadline: float, kernels: list[str] | None,
               positions: tuple[int, ...]) -> dict:
    bucket = w4a16_kernels.rows_bucket(batch)
    sms = w4a16_kernels.sm_count(runtime.device)
    start_ms = step_ms(runtime, batch, positions)
    result = {"step_ms_before": start_ms}
    for (name, (k, n)), shape_deadline in with_shares(list(SHAPES.items()), deadline):
        key = f"{bucket},{n},{k},128"
        current = table.get(key) or w4a16_kernels.default_config(bucket, n, k, 128, runtime.device)
        best_ms, best = step_ms(runtime, batch, positions), current
        timed = 0
        for config in candidates(batch, k, n, sms, runtime.device):
            if config == current or not worth_timing(config, n, sms) or (kernels and config["kernel"] not in kernels):
                continue
            if time.monotonic() > shape_deadline:
                print(f"batch {batch} {name}: out of time", flush=True)
                break
            table[key] = config
            try:
                ms = step_ms(runtime, batch, positions)
            except Exception as err:  # e.g. more shared memory than the GPU has
                print(f"  skipped {config}: {type(err).__name__}", flush=True)
                continue
            timed += 1
            if ms < best_ms:
                best_ms, best = ms, config
        table[key] = best
        print(f"batch {batch} {name}: step {best_ms:.3f} ms with {best} ({timed} configs timed)", flush=True)
    result["step_ms_after"] = step_ms(runtime, batch, positions)
    print(f"batch {batch}: step {start_ms:.3f} -> {result['step_ms_after']:.3f} ms", flush=True)
    return result


def compare_tables(runtime: LlamaRuntime, batch: int, table: dict, other: dict, positions: tuple[int, ...],
                   rounds: int = 3) -> dict:
    """The step with ``other``'s configs and with ``table``'s, alternately, at each position (the table the kernels
    read is swapped in place and put back)."""
    shipped = dict(table)
    times = {position: {"against": [], "shipped": []} for position in positions}
    try:
        for _ in range(rounds):
            for position in positions:
                for name, configs in (("against", other), ("shipped", shipped)):
                    table.clear()
                    table.update(configs)
                    times[position][name].append(step_ms(runtime, batch, (position,)))
    finally:
        table.clear()
        table.update(shipped)
    for position, pair in times.items():
        print(f"batch {batch}, {position} tokens in: step {min(pair['against']):.3f} ms with the other table, "
              f"{min(pair['shipped']):.3f} with the shipped one (each the best of {rounds}: {pair})", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 16])
    parser.add_argument("--seconds", type=float, default=360)
    parser.add_argument("--write", action="store_true", help="update worker/kernels/w4a16_configs.json itself")
    parser.add_argument("--kernels", nargs="+", help="time only these kernels' configs (e.g. gemv)")
    parser.add_argument("--against", type=Path, help="a configs table: time the step with it and the shipped one")
    parser.add_argument("--positions", type=int, nargs="+", default=[POSITION],
                        help="tokens in each row (below 2,048): the step timed at each, their mean compared")
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    path = write_synthetic_checkpoint(Path(tempfile.mkdtemp(dir="/dev/shm")) / "ckpt", XWIN_13B)
    loaded = load_model(path, device="cuda")
    device_name = torch.cuda.get_device_name()
    table = w4a16_kernels.tuned_configs(device_name)  # the cached dict the kernels read: tuned in place
    positions = tuple(args.positions)
    report = {"device": device_name, "positions": positions}
    for batch, batch_deadline in with_shares(args.batches, deadline):
        runtime = LlamaRuntime(loaded.model, 2048, max_batch=batch, cuda_graphs=True)
        if args.against:
            other = json.loads(args.against.read_text()).get(device_name, {})
            key = f"batch_{batch}_against_{args.against.name}"
            report[key] = compare_tables(runtime, batch, table, other, positions)
        else:
            report[f"batch_{batch}"] = tune_batch(runtime, batch, table, batch_deadline, args.kernels, positions)
        del runtime
        gc.collect()  # the runtime's graphs sit in reference cycles
        torch.cuda.empty_cache()
    if args.against:
        write_result("tune_in_step", report)
        return
    target = w4a16_kernels.TUNED_CONFIGS if args.write else Path(os.environ.get("OUT", "."), "w4a16_configs.json")
    w4a16_kernels.write_tuned_configs(device_name, table, target)
    write_result("tune_in_step", report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
