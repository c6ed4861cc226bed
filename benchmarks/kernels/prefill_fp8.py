"""Prompt-sized int4 matmuls on fp8 tensor cores against bf16 (``XWINBOT_PREFILL_DTYPE=fp8``).

A prompt's matmuls (more than ``FUSED_MAX_ROWS`` rows) rebuild each layer's weights and hand them to cuBLAS: in
bf16 (``dequantized_matmul``, the default) or as e4m3 over a scale per output column, the prompt's rows over a
scale each, in one scaled GEMM per chunk (``fp8_dequantized_matmul``; Hopper's fp8 tensor cores run twice bf16's
rate). Per Llama-13B layer shape and row count this times both paths on the same layers (CUDA graphs, layers
cycled beyond L2), and measures each one's error against the product in fp32 of the same int4 weights; then the
40-layer sums. Also timed alone: the rows' conversion to fp8 and the fp8 GEMM over a prebuilt W (with and without
fast accumulation), the floor the rebuild adds to.

    python -m benchmarks.kernels.prefill_fp8 [--rows 512 4096]
"""

from __future__ import annotations

import argparse
import json

import torch

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

CALLS = 3  # per graph: these calls take 0.2-10 ms each


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm())


def time_shape(name: str, k: int, n: int, rows_list: list[int], device) -> list[dict]:
    layers = [random_layer(k, n, device, TritonInt4Linear) for _ in range(copies_beyond_l2(k, n, 0.5))]
    scales = [w4a16.fp8_column_scales(layer.scales, layer.zeros) for layer in layers]
    first = layers[0]
    weight = w4a16.dequantize_columns(first.packed, first.scales, first.zeros, first.group_size, 0, n,
                                      torch.empty(k * n, device=device))  # W.T [K, N] in fp32
    w8 = w4a16.dequantize_columns(first.packed, first.scales, first.zeros, first.group_size, 0, n,
                                  torch.empty(k * n, device=device, dtype=torch.float8_e4m3fn),
                                  scales[0].reciprocal())
    out = []
    for rows in rows_list:
        x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)
        exact = x.float() @ weight

        def bf16(layer, x=x):
            return w4a16.dequantized_matmul(x, layer.packed, layer.scales, layer.zeros, layer.group_size)

        def fp8(layer, column_scales, x=x):
            return w4a16.fp8_dequantized_matmul(x, layer.packed, layer.scales, layer.zeros, layer.group_size,
                                                column_scales)

        x8, x_scales = w4a16.fp8_rows(x)

        def gemm_alone(fast_accum: bool, x8=x8, x_scales=x_scales):  # over the whole prebuilt W: the rebuild's floor
            return lambda: torch._scaled_mm(x8, w8, scale_a=x_scales, scale_b=scales[0][None],
                                            out_dtype=torch.bfloat16, use_fast_accum=fast_accum)

        row = dict(layer=name, k=k, n=n, rows=rows,
                   fp8_rows_us=graph_time_us(lambda x=x: w4a16.fp8_rows(x), CALLS),
                   fp8_gemm_alone_us=graph_time_us(gemm_alone(False), CALLS),
                   fp8_gemm_fast_accum_us=graph_time_us(gemm_alone(True), CALLS),
                   bf16_us=graph_time_us(cycling([lambda lay=lay: bf16(lay) for lay in layers]), CALLS),
                   fp8_us=graph_time_us(cycling([lambda lay=lay, s=s: fp8(lay, s) for lay, s in zip(layers, scales)]),
                                        CALLS),
                   bf16_rel_err=relative_error(bf16(first), exact),
                   fp8_rel_err=relative_error(fp8(first, scales[0]), exact))
        row["speedup"] = row["bf16_us"] / row["fp8_us"]
        print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in row.items()}), flush=True)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[512, 4096])
    args = parser.parse_args()
    device = torch.device("cuda")
    timings = time_every_shape(time_shape, args.rows, device)
    summary = {}
    for rows in args.rows:
        at = [t for t in timings if t["rows"] == rows]
        summary[rows] = {f"{key[:-3]}_ms_40_layers": sum(t[key] for t in at) * 40 / 1000
                         for key in ("bf16_us", "fp8_us", "fp8_rows_us", "fp8_gemm_alone_us", "fp8_gemm_fast_accum_us")}
        summary[rows]["speedup"] = summary[rows]["bf16_ms_40_layers"] / summary[rows]["fp8_ms_40_layers"]
        print(f"rows {rows}: " + json.dumps({k: round(v, 2) for k, v in summary[rows].items()}), flush=True)
    write_result("prefill_fp8", dict(timings=timings, summary=summary))


if __name__ == "__main__":
    main()
