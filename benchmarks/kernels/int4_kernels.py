"""The int4 matmul kernels on the GPU: correctness in bf16, then time per Llama-13B layer shape and row count.

Compares, for M activation rows: our Triton path (``TritonInt4Linear``: fused w4a16 kernel up to 64 rows,
rebuilt weights + cuBLAS above), PyTorch's ``_weight_int4pack_mm`` (``TinygemmInt4Linear``, "tinygemm") and a plain
bf16 ``F.linear`` (cuBLAS on a 16-bit weight: what 4-bit has to beat to be worth it). Each timing replays
a CUDA graph of 20 calls (as decoding does), so launch overhead is not counted.

    python -m benchmarks.kernels.int4_kernels           # correctness + timings (tuned configs where known)
    python -m benchmarks.kernels.int4_kernels --check   # correctness only

The configs themselves are tuned inside the whole decode step: ``benchmarks/kernels/tune_in_step.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math

import torch
import torch.nn.functional as F

from benchmarks.result_json import write_result
from worker.kernels import w4a16 as w4a16_kernels
from worker.model.gptq_layout import act_order_g_idx, dequantize, quantize_weight
from worker.model.tinygemm_linear import Int4Codes, TinygemmInt4Linear
from worker.model.triton_linear import TritonInt4Linear

SHAPES = {"qkv": (5120, 15360), "o": (5120, 5120), "gate_up": (5120, 27648), "down": (13824, 5120)}
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 512)


def check(device) -> list[dict]:
    out = []
    for group, act_order, sym in ((128, True, True), (128, False, False), (64, True, False), (32, False, True)):
        k, n = 2048, 768
        t = quantize_weight(torch.randn(n, k), 4, group, sym, act_order_g_idx(k, group) if act_order else None)
        layers = {"triton": TritonInt4Linear.from_codes(Int4Codes.from_gptq(t, group, 1, device), torch.bfloat16),
                  "tinygemm": TinygemmInt4Linear.from_codes(Int4Codes.from_gptq(t, group, 1, device), torch.bfloat16)}
        for rows in (1, 3, 16, 33, 64, 65, 300):
            x = torch.randn(rows, k)
            ref = x.bfloat16().float() @ dequantize(t, 4).T
            for name, layer in layers.items():
                got = layer(x.to(device, torch.bfloat16)).float().cpu()
                out.append(dict(kernel=name, group=group, act_order=act_order, rows=rows,
                                rel_err=float((got - ref).norm() / ref.norm())))
    return out


def dot_codes_identical(device) -> dict[int, float]:
    """The 2-32-row kernel's bf16x2 code - zero against its fp32 route (``ASM=False``), same inputs: the
    largest difference of the outputs per row count (exact values both ways, so 0)."""
    layer = random_layer(5120, 5120, device, TritonInt4Linear)
    diffs = {}
    for rows in (2, 9, 16, 32):
        x = torch.randn(rows, 5120, device=device, dtype=torch.bfloat16)
        config = w4a16_kernels.config_for_bucket(w4a16_kernels.rows_bucket(rows), 5120, 5120, 128, device)
        args = (x, layer.packed, layer.scales, layer.zeros, 128, config)
        with_asm = w4a16_kernels.matmul_partials(*args).sum(0)
        w4a16_kernels.INTERPRETING = True  # launches with ASM=False
        try:
            without = w4a16_kernels.matmul_partials(*args).sum(0)
        finally:
            w4a16_kernels.INTERPRETING = False
        diffs[rows] = float((with_asm - without).abs().max())
    return diffs


def graph_time_us(fn, calls: int = 20, replays: int = 10) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    return replay_ms(graph, replays) * 1000 / calls


def replay_ms(graph, replays: int) -> float:
    """Milliseconds per replay of a captured graph (anything with .replay()), timed with device events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def random_layer(k: int, n: int, device, kind):
    """A layer of random codes (timing does not depend on the values), built on the GPU."""
    g = torch.Generator(device=device).manual_seed(0)
    codes = torch.randint(0, 16, (n, k), device=device, dtype=torch.int32, generator=g)
    scales = torch.rand(k // 128, n, device=device) * 0.004 + 0.002
    zeros = torch.full((k // 128, n), 8.0, device=device)
    perm = torch.randperm(k, device=device)
    c = Int4Codes(codes, scales, zeros, perm, None, 128)
    return kind.from_codes(c, torch.bfloat16)


def k_splits(k_blocks: int, columns: int, sms: int, most_per_sm: int = 12) -> list[int]:
    """K splits to time for a layer of ``k_blocks`` K blocks and ``columns`` column tiles: K's divisors (every
    program the same number of blocks), and the splits that give each SM a whole number of programs (1 to
    ``most_per_sm``): a split need not divide K, and with too few programs to fill every SM's warp slots the
    2..32-row kernel waits on memory (benchmarks/NOTES.md row 77)."""
    divisors = {s for s in range(1, k_blocks + 1) if k_blocks % s == 0}
    whole_waves = {round(per_sm * sms / columns) for per_sm in range(1, most_per_sm + 1)}
    return sorted(s for s in divisors | whole_waves if 1 <= s <= k_blocks and columns * s <= most_per_sm * sms)


def copy_warps_configs(bucket: int, k: int, n: int, sms: int, block_ns: tuple[int, ...] = (128,)):
    """The Gluon copy-warp kernel's configs to time for a rows bucket, in the tuned table's form: two programs an SM
    first (they won every 32-row shape on the H100, NOTES row 81), then ring depths and K splits."""
    for block_n, maxnreg, stages in itertools.product(block_ns, (128, None), (3, 4, 6)):
        for split in k_splits(k // 128, -(-n // block_n), sms):
            yield dict(kernel="copy_warps", BLOCK_M=bucket, BLOCK_N=block_n, BLOCK_K=128, split=split, num_warps=4,
                       num_stages=stages, **({"maxnreg": maxnreg} if maxnreg else {}))


def layer_bytes(k: int, n: int) -> int:
    """Bytes a 4-bit layer reads: the codes, and per group of 128 an fp16 scale and a uint8 zero per column."""
    return k * n // 2 + k // 128 * n * 3


def copies_beyond_l2(k: int, n: int, bytes_per_weight: float) -> int:
    """How many copies of a layer to cycle through so that, as in a real decode step, its weights come from
    memory and not from the L2 cache left warm by the previous call (60 MB on an H200: o_proj is 13 MB)."""
    return max(2, math.ceil(256e6 / (k * n * bytes_per_weight)))


def time_every_shape(time_shape, rows_list: list[int], device) -> list[dict]:
    """``time_shape(name, k, n, rows_list, device)``'s rows for every 13B layer shape, GPU memory freed between."""
    timings = []
    for name, (k, n) in SHAPES.items():
        timings += time_shape(name, k, n, rows_list, device)
        torch.cuda.empty_cache()
    return timings


def cycling(functions):
    """One call of a different function each time (graph capture records the whole cycle)."""
    turn = itertools.cycle(functions)
    return lambda: next(turn)()


def time_shape(name: str, k: int, n: int, device) -> list[dict]:
    triton_layers = [random_layer(k, n, device, TritonInt4Linear) for _ in range(copies_beyond_l2(k, n, 0.5))]
    tinygemm_layers = [random_layer(k, n, device, TinygemmInt4Linear) for _ in range(copies_beyond_l2(k, n, 0.5))]
    weights = [torch.randn(n, k, device=device, dtype=torch.bfloat16) for _ in range(copies_beyond_l2(k, n, 2))]
    rows_out = []
    for rows in ROWS:
        x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)
        row = dict(layer=name, k=k, n=n, rows=rows,
                   triton_us=graph_time_us(cycling([lambda layer=layer, x=x: layer(x) for layer in triton_layers])),
                   tinygemm_us=graph_time_us(cycling([lambda layer=layer, x=x: layer(x) for layer in tinygemm_layers])),
                   bf16_us=graph_time_us(cycling([lambda w=w, x=x: F.linear(x, w) for w in weights])))
        row["triton_GBps"] = layer_bytes(k, n) / row["triton_us"] / 1e3
        rows_out.append(row)
        print(json.dumps({key: round(v, 1) if isinstance(v, float) else v for key, v in row.items()}), flush=True)
    return rows_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="correctness only (no timings)")
    args = parser.parse_args()
    device = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    checks = check(device)
    report["max_rel_err"] = {k: max(r["rel_err"] for r in checks if r["kernel"] == k) for k in ("triton", "tinygemm")}
    print("correctness (bf16, vs fp32 dequantized):", report["max_rel_err"], flush=True)
    one_row = max(r["rel_err"] for r in checks if r["kernel"] == "triton" and r["rows"] == 1)
    print(f"correctness of one row (the bf16x2 assembly): {one_row:.2e}", flush=True)
    report["dot_codes_max_abs_diff"] = dot_codes_identical(device)
    print("correctness of 2-32 rows, bf16x2 codes against fp32 ones (max |diff| by rows):",
          report["dot_codes_max_abs_diff"], flush=True)
    if args.check:
        write_result("int4_kernels_check", report)
        return
    timings = []
    for name, (k, n) in SHAPES.items():
        timings += time_shape(name, k, n, device)
        torch.cuda.empty_cache()
    report["timings"] = timings
    per_token = {rows: sum(r["triton_us"] for r in timings if r["rows"] == rows) * 40 / 1000 for rows in ROWS}
    report["matmul_ms_per_step_40_layers"] = per_token
    print("matmul ms per 13B step (40 layers), by rows:", {k: round(v, 2) for k, v in per_token.items()})
    write_result("int4_kernels", report)


if __name__ == "__main__":
    main()
