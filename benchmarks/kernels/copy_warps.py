"""The Gluon int4 kernel with a warp that only copies (``worker.kernels.w4a16_copy_warps``), each config alone,
against the Triton kernel the table serves otherwise (``worker.kernels.w4a16._swap_dot_kernel``), on the 13B layer
shapes: which configs are worth timing in the whole step (``tune_in_step``), and the kernel's own gain.

    python -m benchmarks.kernels.copy_warps [--rows 32 17] [--seconds 60]   # a GPU with TMA (sm_90)

Checks each shape and config against the Triton kernel's sums, then times both as CUDA graphs cycling over
layer copies past the L2 (as ``sweep_configs`` does).
"""

from __future__ import annotations

import argparse
import time

import torch
import triton

from benchmarks.kernels.int4_kernels import (
    SHAPES,
    copies_beyond_l2,
    copy_warps_configs,
    cycling,
    graph_time_us,
    random_layer,
)
from benchmarks.result_json import write_result
from worker.kernels import w4a16
from worker.kernels import w4a16_copy_warps as copy_warps
from worker.model.triton_linear import TritonInt4Linear


def copy_warp_partials(x, packed, scales, zeros, config: dict) -> torch.Tensor:
    """x [M <= 32, K] (bf16, group order, groups of 128) @ W.T as [split, M, N] fp32 partial sums, by the served
    kernel with this config."""
    out = torch.empty((config["split"], x.shape[0], packed.shape[1]), device=x.device, dtype=torch.float32)
    return copy_warps.matmul_partials(x, packed, scales, zeros, 128, out, config)


def configs(rows: int, k: int, n: int, sms: int):
    # 64 columns last: unpadded its stages' zeros sat on 64-byte boundaries and a copy hit a misaligned address
    # (NOTES row 80); padded since, not yet run, and a fault would end this process's CUDA context
    for config in copy_warps_configs(w4a16.rows_bucket(rows), k, n, sms, block_ns=(128, 64)):
        if sms // 2 <= triton.cdiv(n, config["BLOCK_N"]) * config["split"] <= 8 * sms:
            yield config


def compare_shape(rows: int, k: int, n: int, device, seconds: float) -> dict:
    layers = [random_layer(k, n, device, TritonInt4Linear) for _ in range(copies_beyond_l2(k, n, 0.5))]
    x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)
    shipped = w4a16.config_for_bucket(w4a16.rows_bucket(rows), n, k, 128, device)
    # the sums to match: the swap kernel's in fp32 (two splits), since a one-split config, as the table may
    # serve, rounds its output to bf16 (~1.7e-3 apart from fp32 sums, the check's scale)
    reference = dict(w4a16.default_config(w4a16.rows_bucket(rows), n, k, 128, device), kernel="swap", split=2)
    want = w4a16.matmul_partials(x, layers[0].packed, layers[0].scales, layers[0].zeros, 128, reference).sum(0)
    shipped_us = graph_time_us(cycling([
        lambda layer=layer: w4a16.matmul_partials(x, layer.packed, layer.scales, layer.zeros, 128, shipped)
        for layer in layers]))
    best, best_us, errors, deadline = None, float("inf"), [], time.monotonic() + seconds
    for config in configs(rows, k, n, w4a16.sm_count(device)):
        if time.monotonic() > deadline:
            break
        try:
            got = copy_warp_partials(x, layers[0].packed, layers[0].scales, layers[0].zeros, config).sum(0)
            error = float((got - want).norm() / want.norm())
            if error > 1e-3:
                raise ValueError(f"sums differ from the shipped kernel's: relative error {error:.2e}")
            us = graph_time_us(cycling([
                lambda layer=layer, config=config: copy_warp_partials(x, layer.packed, layer.scales, layer.zeros,
                                                                      config)
                for layer in layers]))
        except Exception as err:  # the message is the finding: print it, go on
            errors.append(f"{config}: {type(err).__name__}: {str(err)[:300]}")
            print(f"  {errors[-1]}", flush=True)
            continue
        if us < best_us:
            best, best_us = config, us
    return dict(shipped=shipped, shipped_us=shipped_us, best=best, best_us=best_us, errors=errors[:5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[32, 17])
    parser.add_argument("--seconds", type=float, default=60, help="per rows count, shared by the shapes")
    args = parser.parse_args()
    device = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name()}
    for rows in args.rows:
        totals = {"shipped": 0.0, "copy_warps": 0.0}
        for name, (k, n) in SHAPES.items():
            result = report[f"{name}/{rows}"] = compare_shape(rows, k, n, device, args.seconds / len(SHAPES))
            totals["shipped"] += result["shipped_us"] * 40 / 1000
            totals["copy_warps"] += result["best_us"] * 40 / 1000
            print(f"{name} rows {rows}: shipped {result['shipped_us']:.2f} us, copy warps {result['best_us']:.2f} us "
                  f"with {result['best']}", flush=True)
            torch.cuda.empty_cache()
        report[f"step_ms/{rows}"] = totals
        print(f"rows {rows}: int4 matmul ms per 40-layer step: shipped {totals['shipped']:.3f}, copy warps "
              f"{totals['copy_warps']:.3f}", flush=True)
    write_result("copy_warps", report, indent=1)


if __name__ == "__main__":
    main()
