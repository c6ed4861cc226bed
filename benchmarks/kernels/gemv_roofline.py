"""The one-row int4 kernel against the card's read bandwidth, shape by shape (13B layers, batch 1).

For each Llama-13B layer shape: a plain read of the same bytes (packed words, scales, zeros) by a Triton
kernel with 16-byte loads, one or four in flight a thread, 1-8 programs an SM (the roof this kernel can
reach), the configs in ``worker/kernels/w4a16_configs.json``, and a grid of tiles, warps and K splits, and the
tuned config with each word's products summed in fp32 instead of bf16. Each time replays a CUDA graph of calls
cycling through copies of the layer past the L2, as a decode step reads them; the split-K partial sums are left
to the consumer, as in the step. Prints GB/s per shape, best configs last; ``--ncu`` runs only the tuned and
best configs, twice each (for ``ncu --kernel-name regex:gemv``).

    python -m benchmarks.kernels.gemv_roofline [--seconds 240] [--ncu best.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

from benchmarks.kernels import int4_kernels
from benchmarks.kernels.int4_kernels import SHAPES, copies_beyond_l2, cycling, graph_time_us, layer_bytes
from benchmarks.result_json import write_result
from worker.kernels import w4a16 as w4a16_kernels
from worker.model.triton_linear import TritonInt4Linear


@triton.jit
def _read_kernel(w_ptr, s_ptr, z_ptr, out_ptr, n_words, n_small, BLOCK: tl.constexpr):
    """Reads every word (and every scale and zero) once, 16 bytes a thread per load; writes one value a program."""
    pid, programs = tl.program_id(0), tl.num_programs(0)
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for start in range(pid * BLOCK, n_words, programs * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc ^= tl.load(w_ptr + offs, mask=offs < n_words, other=0, eviction_policy="evict_first")
    for start in range(pid * BLOCK, n_small, programs * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc ^= tl.load(s_ptr + offs, mask=offs < n_small, other=0).to(tl.int32)
        acc ^= tl.load(z_ptr + offs, mask=offs < n_small, other=0).to(tl.int32)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


def random_layer(k: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 13B-shaped layer of random codes in the GPU layout: (packed, scales, zeros)."""
    layer = int4_kernels.random_layer(k, n, device, TritonInt4Linear)
    return layer.packed, layer.scales, layer.zeros


def read_call(layer, out, programs: int, block: int):
    packed, scales, zeros = layer
    return lambda: _read_kernel[(programs,)](packed, scales, zeros, out, packed.numel(), scales.numel(),
                                             BLOCK=block, num_warps=8)


# (programs per SM, words a program reads per trip: 1024 is one 16-byte load a thread, 4096 four in flight)
READ_SHAPES = [(p, block) for p in (1, 2, 4, 8) for block in (1024, 4096)]


def gemv_call(layer, x, config: dict):
    packed, scales, zeros = layer
    return lambda: w4a16_kernels.matmul_partials(x, packed, scales, zeros, 128, config)


def candidates(k: int):
    for block_n in (64, 128, 32, 256):  # the likelier winners first: the time may run out
        for block_k in (256, 512):
            for warps in (2, 4, 1, 8):
                if block_n * block_k // 8 // (32 * warps) < 4:  # under one 16-byte load a thread
                    continue
                k_blocks = k // block_k
                for split in (s for s in range(1, k_blocks + 1) if k_blocks % s == 0):
                    yield dict(kernel="gemv", BLOCK_M=1, BLOCK_N=block_n, BLOCK_K=block_k, split=split,
                               num_warps=warps, num_stages=1)


def programs_of(config: dict, n: int) -> int:
    return triton.cdiv(n, config["BLOCK_N"]) * config["split"]


def sweep(seconds: float, device) -> dict:
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    report: dict = {"device": torch.cuda.get_device_name(device), "shapes": {}}
    deadline = time.monotonic() + seconds
    per_shape = seconds / len(SHAPES)
    for name, (k, n) in SHAPES.items():
        shape_deadline = min(deadline, time.monotonic() + per_shape)
        layers = [random_layer(k, n, device) for _ in range(copies_beyond_l2(k, n, 0.5))]
        x = torch.randn(1, k, device=device, dtype=torch.bfloat16)
        gb = layer_bytes(k, n) / 1e9
        out = torch.empty(sms * 8, device=device, dtype=torch.int32)
        reads = {f"{p} a SM, {block} words a trip": graph_time_us(cycling([read_call(layer, out, p * sms, block)
                                                                         for layer in layers]))
                 for p, block in READ_SHAPES}
        roof = min(reads.values())
        tuned = w4a16_kernels.config_for_bucket(1, n, k, 128, device)
        tuned_us = graph_time_us(cycling([gemv_call(layer, x, tuned) for layer in layers]))
        fp32_us = graph_time_us(cycling([gemv_call(layer, x, dict(tuned, bf16_words=False)) for layer in layers]))
        rows = []
        for config in candidates(k):
            if not 0.5 * sms <= programs_of(config, n) <= 24 * sms:
                continue
            if time.monotonic() > shape_deadline:
                break
            us = graph_time_us(cycling([gemv_call(layer, x, config) for layer in layers]))
            rows.append(dict(config=config, us=us, GBps=gb / us * 1e6))
        rows.sort(key=lambda r: r["us"])
        entry = dict(k=k, n=n, MB=gb * 1e3, read_roof_us=roof, read_roof_GBps=gb / roof * 1e6,
                     read_GBps={shape: gb / us * 1e6 for shape, us in reads.items()}, tuned=tuned,
                     tuned_us=tuned_us, tuned_GBps=gb / tuned_us * 1e6, fp32_words_us=fp32_us, timed=len(rows),
                     best=rows[:8])
        report["shapes"][name] = entry
        print(f"{name}: {gb * 1e3:.1f} MB  roof {roof:.1f} us ({gb / roof * 1e6:.0f} GB/s, best of "
              f"{', '.join(f'{shape} {gb / us * 1e6:.0f}' for shape, us in reads.items())})  tuned {tuned_us:.1f} us "
              f"({gb / tuned_us * 1e6:.0f} GB/s; fp32 words {gb / fp32_us * 1e6:.0f})  best of {len(rows)}: "
              + ("; ".join(f"{r['us']:.1f} us {r['GBps']:.0f} GB/s {short(r['config'])}" for r in rows[:3])),
              flush=True)
        del layers
        torch.cuda.empty_cache()
    return report


def short(config: dict) -> str:
    return f"n{config['BLOCK_N']} k{config['BLOCK_K']} w{config['num_warps']} s{config['split']}"


def ncu_target(best_file: Path, device) -> None:
    """Each shape's tuned config and best config, twice each, for ncu to profile."""
    report = json.loads(best_file.read_text())
    for name, entry in report["shapes"].items():
        k, n = entry["k"], entry["n"]
        layer = random_layer(k, n, device)
        x = torch.randn(1, k, device=device, dtype=torch.bfloat16)
        for config in [entry["tuned"]] + [r["config"] for r in entry["best"][:1]]:
            print(name, short(config), flush=True)
            for _ in range(2):
                gemv_call(layer, x, config)()
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--ncu", type=Path, help="a report of this script: run its configs for ncu")
    args = parser.parse_args()
    device = torch.device("cuda")
    if args.ncu:
        ncu_target(args.ncu, device)
        return
    report = sweep(args.seconds, device)
    write_result("gemv_roofline", report, indent=1)


if __name__ == "__main__":
    main()
