"""Prompt-sized int4 matmuls (65-1024 rows): the fused dot kernel over the 4-bit codes against rebuilding W.

Above ``FUSED_MAX_ROWS`` rows ``TritonInt4Linear`` rebuilds each layer's bf16 weights and hands them to cuBLAS
(``dequantized_matmul``); a mixed step or a short prompt pays that rebuild in every layer. This times, per
Llama-13B layer shape and row count, the rebuild + cuBLAS path, a plain bf16 ``F.linear`` (cuBLAS on weights already
in 16 bits: the floor), and the fused ``_unpacked_dot_kernel`` (codes unpacked in registers, one dot per K block,
no W in memory) in every (BLOCK_M, BLOCK_N, warps, stages) below, each checked against the rebuild path. It
prints, per row count, the best fused config, its time against the rebuild, and the 40-layer sum of both.

    python -m benchmarks.kernels.prefill_gemm [--rows 65 128 256 512 1024]
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F

from benchmarks.kernels.int4_kernels import (
    copies_beyond_l2,
    cycling,
    graph_time_us,
    random_layer,
    time_every_shape,
)
from benchmarks.result_json import write_result
from worker.kernels import w4a16
from worker.model.triton_linear import TritonInt4Linear

BLOCKS_M = (64, 128)
BLOCKS_N = (64, 128, 256)
WARPS_STAGES = ((4, 3), (8, 3), (4, 4), (8, 4))
CALLS = 5  # per graph: these calls take 0.05-2 ms each


def fused(layer: TritonInt4Linear, x: torch.Tensor, block_m: int, block_n: int, warps: int, stages: int):
    config = dict(kernel="unpacked", BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=128, split=1, num_warps=warps,
                  num_stages=stages)
    return w4a16.matmul_partials(x, layer.packed, layer.scales, layer.zeros, layer.group_size, config)[0]


def rebuilt(layer: TritonInt4Linear, x: torch.Tensor):
    return w4a16.dequantized_matmul(x, layer.packed, layer.scales, layer.zeros, layer.group_size)


def time_shape(name: str, k: int, n: int, rows_list: list[int], device) -> list[dict]:
    layers = [random_layer(k, n, device, TritonInt4Linear) for _ in range(copies_beyond_l2(k, n, 0.5))]
    weights = [torch.randn(n, k, device=device, dtype=torch.bfloat16) for _ in range(copies_beyond_l2(k, n, 2))]
    out = []
    for rows in rows_list:
        x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)
        reference = rebuilt(layers[0], x).float()
        row = dict(layer=name, k=k, n=n, rows=rows,
                   rebuilt_us=graph_time_us(cycling([lambda lay=lay, x=x: rebuilt(lay, x) for lay in layers]), CALLS),
                   bf16_us=graph_time_us(cycling([lambda w=w, x=x: F.linear(x, w) for w in weights]), CALLS), fused={})
        for block_m, block_n, (warps, stages) in itertools.product(BLOCKS_M, BLOCKS_N, WARPS_STAGES):
            key = f"{block_m}x{block_n} w{warps} s{stages}"
            try:
                got = fused(layers[0], x, block_m, block_n, warps, stages).float()
                error = float((got - reference).norm() / reference.norm())
                us = graph_time_us(cycling([lambda lay=lay, x=x, c=(block_m, block_n, warps, stages): fused(lay, x, *c)
                                            for lay in layers]), CALLS)
            except Exception as exc:  # a config the compiler cannot fit (shared memory): recorded, skipped
                row["fused"][key] = dict(error=type(exc).__name__)
                continue
            row["fused"][key] = dict(us=us, rel_err=error)
        timed = {key: v for key, v in row["fused"].items() if "us" in v and v["rel_err"] < 1e-2}
        best = min(timed, key=lambda key: timed[key]["us"])
        row.update(best=best, best_us=timed[best]["us"], speedup_vs_rebuilt=row["rebuilt_us"] / timed[best]["us"])
        print(json.dumps(dict(layer=name, rows=rows, rebuilt_us=round(row["rebuilt_us"], 1),
                              bf16_us=round(row["bf16_us"], 1), best=best, best_us=round(row["best_us"], 1),
                              rel_err=f"{timed[best]['rel_err']:.1e}")), flush=True)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[65, 128, 256, 512, 1024])
    args = parser.parse_args()
    device = torch.device("cuda")
    timings = time_every_shape(time_shape, args.rows, device)
    summary = {}
    for rows in args.rows:
        at = [t for t in timings if t["rows"] == rows]
        configs = set.intersection(*(set(k for k, v in t["fused"].items() if "us" in v) for t in at))
        one = min(configs, key=lambda key: sum(t["fused"][key]["us"] for t in at))  # one config for every layer
        summary[rows] = dict(rebuilt_ms_40_layers=sum(t["rebuilt_us"] for t in at) * 40 / 1000,
                             bf16_ms_40_layers=sum(t["bf16_us"] for t in at) * 40 / 1000,
                             best_per_layer_ms_40_layers=sum(t["best_us"] for t in at) * 40 / 1000,
                             one_config=one, one_config_ms_40_layers=sum(t["fused"][one]["us"] for t in at) * 40 / 1000)
        print(f"rows {rows}: " + json.dumps({k: round(v, 2) if isinstance(v, float) else v
                                             for k, v in summary[rows].items()}), flush=True)
    write_result("prefill_gemm", dict(timings=timings, summary=summary))


if __name__ == "__main__":
    main()
