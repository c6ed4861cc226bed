"""Where a decode step's GPU time goes: int4 matmul variants, then a profiled step of a 13B-shaped slice."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_checkpoint import XWIN_13B, write_synthetic_checkpoint  # noqa: E402

from worker.llama_runtime import KVCache, forward  # noqa: E402
from worker.loader import load_model  # noqa: E402


def bench(fn, iters=200) -> float:
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters * 1000  # µs


def matmul_variants():
    k, n, g = 5120, 13824, 128
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, device="cuda")
    sz = torch.randn(k // g, n, 2, device="cuda", dtype=torch.bfloat16)
    pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
    dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    perm = torch.randperm(k, device="cuda")
    for m in (1, 8, 32, 500):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        row = [f"M={m}"]
        for tiles in (2, 4, 8):
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs, tiles)
            row.append(f"int4 t{tiles} {bench(lambda: torch.ops.aten._weight_int4pack_mm(x, packed, g, sz)):.1f}")
        row.append(f"gather {bench(lambda: x[:, perm]):.1f}")
        row.append(f"bf16 {bench(lambda: x @ dense.T):.1f}")
        print(" | ".join(row), "µs")


def profile_step():
    path = write_synthetic_checkpoint(Path(tempfile.mkdtemp(dir="/dev/shm")) / "ckpt", dict(XWIN_13B, num_hidden_layers=4))
    loaded = load_model(path, device="cuda")
    cfg = loaded.config
    for length in (4096, 1024):
        cache = KVCache(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, length, 128, "cuda", torch.bfloat16)
        token = torch.tensor([[5]], device="cuda")
        pos = torch.tensor([600], device="cuda")
        with torch.inference_mode():
            step = lambda: forward(loaded.model, cache, token, pos, 1024, last_only=True)  # noqa: E731
            print(f"4-layer decode step, cache {length}: {bench(step, 50):.0f} µs")
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    step()
                torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


if __name__ == "__main__":
    matmul_variants()
    profile_step()
