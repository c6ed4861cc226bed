"""Sweep the int4 kernel configs per 13B layer shape with each kernel alone: quicker than tuning inside the step.

For each rows bucket and layer shape, every candidate (tile, warps, stages, K split) is checked against the
current config's output and timed as a CUDA graph of calls cycling over layer copies past the L2 (as in
``int4_kernels``); the fastest is kept. ``tune_in_step`` then confirms or refines inside the whole step.

    python -m benchmarks.kernels.sweep_configs --rows 1 32 [--seconds-per-shape 40] [--write]
    # the table for this GPU into $OUT/w4a16_configs.json, or worker/kernels/w4a16_configs.json with --write
    python -m benchmarks.kernels.sweep_configs --model llama3-8b --rows 1   # the Llama-3-8B layer shapes
    ncu --clock-control none --kernel-name regex:'swap_dot|gemv' --section WarpStateStats ... \
        python -m benchmarks.kernels.sweep_configs --rows 32 1 --ncu           # the current configs, profiled
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import torch

from benchmarks.kernels.int4_kernels import SHAPES as XWIN_13B_SHAPES
from benchmarks.kernels.int4_kernels import copies_beyond_l2, cycling, graph_time_us, k_splits, random_layer
from benchmarks.result_json import write_result
from worker.kernels import w4a16 as w4a16_kernels
from worker.model.triton_linear import TritonInt4Linear

# (K, N) of each fused matmul, and the layers a step runs it in
MODELS = {
    "xwin13b": (XWIN_13B_SHAPES, 40),
    "llama3-8b": ({"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}, 32),
}


def candidates(rows: int, k: int, n: int, sms: int, first: dict | None = None):
    """Configs for a rows bucket (group 128): tiles, warps, stages, and K splits that give every SM work
    without leaving each program almost nothing; ``first``'s tile (the current config's) before the others."""
    bucket = w4a16_kernels.rows_bucket(rows)
    kernel = w4a16_kernels.kernel_for(bucket, 128)
    if kernel == "gemv":
        tiles = itertools.product((32, 64, 128, 256), (512, 256), (2, 4, 8), (1,))  # num_stages: NOTES row 100
        programs_range = (sms, 12 * sms)
    else:
        # 2 warps: Triton builds the W tile in registers for mma.sync instead of wgmma's shared-memory trips
        # (H200: the 16-row configs, 4.09 -> 3.65 ms a step; 32 rows: no better than 8 warps)
        tiles = itertools.product((128, 256, 64), (128,), (8, 4, 2), (3, 4, 2))
        programs_range = (sms // 2, 8 * sms)
    if first:
        tiles = sorted(tiles, key=lambda tile: tile != (first["BLOCK_N"], first["BLOCK_K"], first["num_warps"],
                                                        first["num_stages"]))
    for block_n, block_k, warps, stages in tiles:
        k_blocks, columns = k // block_k, -(-n // block_n)
        for split in k_splits(k_blocks, columns, sms):
            if programs_range[0] <= columns * split <= programs_range[1]:
                yield from w4a16_kernels.with_one_dot(dict(kernel=kernel, BLOCK_M=bucket, BLOCK_N=block_n,
                                                           BLOCK_K=block_k, split=split, num_warps=warps,
                                                           num_stages=stages))


def sweep_shape(rows: int, k: int, n: int, device, seconds: float) -> dict:
    layers = [random_layer(k, n, device, TritonInt4Linear) for _ in range(copies_beyond_l2(k, n, 0.5))]
    x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)

    def run(config, layer=layers[0]):
        return w4a16_kernels.matmul_partials(x, layer.packed, layer.scales, layer.zeros, 128, config)

    def timed(config) -> float:
        return graph_time_us(cycling([lambda layer=layer: run(config, layer) for layer in layers]))

    current = w4a16_kernels.config_for_bucket(w4a16_kernels.rows_bucket(rows), n, k, 128, device)
    want = run(current).float().sum(0)
    best_us, best, timed_count = timed(current), current, 0
    deadline = time.monotonic() + seconds
    for config in candidates(rows, k, n, w4a16_kernels.sm_count(device), current):
        if time.monotonic() > deadline:
            break
        try:
            got = run(config).float().sum(0)
            if float((got - want).norm() / want.norm()) > 1e-2:
                raise ValueError("output differs from the current config's")
            us = timed(config)
        except Exception as err:  # e.g. more shared memory than the GPU has
            print(f"  skipped {config}: {type(err).__name__}: {str(err)[:120]}", flush=True)
            continue
        timed_count += 1
        if us < best_us:
            best_us, best = us, config
    return dict(current=current, current_us=timed(current), best=best, best_us=best_us, timed=timed_count)


def run_current_configs(rows_list: list[int], shapes: dict, device) -> None:
    """The kernels as configured now, for a profiler (``ncu --kernel-name regex:'swap_dot|gemv' ...``): each call
    on a layer of its own, so its weights come from memory as in a decode step."""
    for rows in rows_list:
        for name, (k, n) in shapes.items():
            layers = [random_layer(k, n, device, TritonInt4Linear) for _ in range(3)]
            x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)
            config = w4a16_kernels.config_for_bucket(w4a16_kernels.rows_bucket(rows), n, k, 128, device)
            print(f"{name} rows {rows}: {config}", flush=True)
            for layer in layers:
                w4a16_kernels.matmul_partials(x, layer.packed, layer.scales, layer.zeros, 128, config)
            torch.cuda.synchronize()
            del layers
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 32, 16])
    parser.add_argument("--seconds-per-shape", type=float, default=40)
    parser.add_argument("--write", action="store_true", help="update worker/kernels/w4a16_configs.json itself")
    parser.add_argument("--model", choices=list(MODELS), default="xwin13b", help="whose layer shapes to sweep")
    parser.add_argument("--ncu", action="store_true",
                        help="sweep nothing: each shape's current config once on each of 3 fresh layers, for ncu")
    args = parser.parse_args()
    shapes, layers = MODELS[args.model]
    device = torch.device("cuda")
    if args.ncu:
        run_current_configs(args.rows, shapes, device)
        return
    device_name = torch.cuda.get_device_name()
    table = w4a16_kernels.tuned_configs(device_name)
    report = {"device": device_name, "model": args.model}
    for rows in args.rows:
        for name, (k, n) in shapes.items():
            result = report[f"{name}/{rows}"] = sweep_shape(rows, k, n, device, args.seconds_per_shape)
            table[f"{w4a16_kernels.rows_bucket(rows)},{n},{k},128"] = result["best"]
            print(f"{name} rows {rows}: {result['current_us']:.2f} -> {result['best_us']:.2f} us with {result['best']} "
                  f"({result['timed']} configs timed)", flush=True)
            torch.cuda.empty_cache()
        step = {key: sum(report[f"{name}/{rows}"][f"{key}_us"] for name in shapes) * layers / 1000
                for key in ("current", "best")}
        report[f"step_ms/{rows}"] = step
        print(f"rows {rows}: matmul ms per {layers}-layer step {step['current']:.3f} -> {step['best']:.3f}", flush=True)
    target = w4a16_kernels.TUNED_CONFIGS if args.write else Path(os.environ.get("OUT", "."), "w4a16_configs.json")
    w4a16_kernels.write_tuned_configs(device_name, table, target)
    write_result("sweep_configs", report, indent=1)


if __name__ == "__main__":
    main()
