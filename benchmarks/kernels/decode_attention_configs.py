"""Decode attention's chunk programs: which (cache entries a program, warps) reads the KV cache fastest.

The chunk kernel holds a [chunk, head_dim] tile of keys and one of values in fp32 registers; at 128 entries and 4
warps it uses 255 registers a thread and spills to the stack. This times every (chunk, warps) pair on the 13B's
attention shape (40 heads of 128) for batch 1 and 32 at several windows, each as a CUDA graph of 20 calls over
caches large enough that each call reads from memory rather than L2, checks each pair's output against the
shipped one, and prints µs a call with the best pair per case. Then (``--step``) the whole decode step of a 13B
synthetic checkpoint, batch 1 and 32 with 900 tokens in (window 1024), with the shipped pair and the best ones,
each captured as the CUDA graph the worker replays, in this one process.

    python -m benchmarks.kernels.decode_attention_configs [--step] [--kv-cache-dtype auto|fp8|int8]

``--kv-cache-dtype``: the cache as XWINBOT_KV_CACHE_DTYPE stores it (fp8 with unit per-head scales, int8 codes with
a scale per entry and head), in the sweep and in the step; auto: bf16.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.kernels.int4_kernels import replay_ms
from benchmarks.result_json import write_result
from worker.kernels import decode_attention as attention
from worker.kernels.kv_quant import KVQuant, cache_dtype, token_scale_bytes
from worker.settings import KV_CACHE_DTYPES

HEADS, HEAD_DIM = 40, 128
CHUNKS = (32, 64, 128, 256)
WARPS = (2, 4, 8)
CASES = ((1, 256), (1, 1024), (1, 4096), (32, 256), (32, 1024), (32, 4096))
CALLS = 20  # per graph: a step's worth of layers, launch overhead amortised
CACHE_BYTES = 512 * 1024**2  # per copy of the cache set: far over the H200's 50 MB of L2


def caches_for(batch: int, window: int, device, kv_dtype: str = "auto") -> list[tuple]:
    """Enough distinct K/V caches that a graph of CALLS calls cycles through memory, not L2: each (keys, values,
    the scale arguments ``decode_attention`` takes for that cache dtype)."""
    dtype = cache_dtype(kv_dtype, torch.bfloat16)
    element = torch.empty((), dtype=dtype).element_size()
    one = 2 * batch * HEADS * window * (HEAD_DIM * element + token_scale_bytes(dtype))
    copies = max(1, min(CALLS, CACHE_BYTES // one))
    shape = (batch, HEADS, window, HEAD_DIM)

    def one_cache():
        quant = KVQuant.of(dtype)
        spread = 1.0 if quant is KVQuant.NONE else 40.0  # codes over int8's range (bf16: as before, NOTES row 60)
        keys, values = (torch.randn(shape, device=device).mul(spread).clamp(-127, 127).to(dtype) for _ in range(2))
        if quant is KVQuant.PER_HEAD:
            return keys, values, {"kv_scales": torch.ones((2, HEADS), device=device)}
        if quant is KVQuant.PER_TOKEN:
            return keys, values, {"token_scales": torch.full((2, batch, HEADS, window), 0.01, device=device),
                                  "key_channel_scales": torch.ones((HEADS, HEAD_DIM), device=device)}
        return keys, values, {}
    return [one_cache() for _ in range(copies)]


def time_config(q, caches, positions, window, chunk, warps) -> tuple[float, torch.Tensor]:
    """µs a call (median of 5 graph replays) and the output of the first call."""
    scale = HEAD_DIM ** -0.5

    def calls():
        def call(keys, values, scales):
            return attention.decode_attention(q, keys, values, positions, window, scale, chunk=chunk,
                                              num_warps=warps, **scales)
        return [call(*caches[i % len(caches)]) for i in range(CALLS)]

    first = calls()[0].clone()  # compiles, and the output to compare
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        calls()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / CALLS)
    return sorted(times)[2], first


def step_ms(pairs: set[tuple[int, int]], kv_dtype: str = "auto") -> dict:
    """The 13B's decode step (ms) at batch 1 and 32, 900 tokens in, for each (chunk, warps) pair."""
    import tempfile
    from pathlib import Path

    from benchmarks.synthetic_checkpoint import XWIN_13B, write_synthetic_checkpoint
    from worker.inference.llama_runtime import LlamaRuntime
    from worker.model.loader import load_model

    model = load_model(write_synthetic_checkpoint(Path(tempfile.mkdtemp(dir="/dev/shm")) / "ckpt", XWIN_13B),
                       device="cuda").model
    shipped = attention.CHUNK, attention.CHUNK_WARPS, attention.INT8_CHUNK_WARPS
    found = {}
    for chunk, warps in sorted(pairs):
        # what the captured step's calls read (one cache dtype a run, so both warps settings alike)
        attention.CHUNK, attention.CHUNK_WARPS, attention.INT8_CHUNK_WARPS = chunk, warps, warps
        for batch in (1, 32):
            runtime = LlamaRuntime(model, 2048, max_batch=batch, cuda_graphs=True, attention="triton",
                                   kv_dtype=cache_dtype(kv_dtype, torch.bfloat16))
            graph = runtime.graphs.get(batch, 1024)
            runtime.step_input[1, :batch].fill_(900)
            found[f"{chunk}x{warps} batch {batch}"] = ms = replay_ms(graph, 50)
            print(f"decode step, attention {chunk}x{warps}, batch {batch:2}: {ms:.3f} ms", flush=True)
            del runtime, graph
            torch.cuda.empty_cache()
    attention.CHUNK, attention.CHUNK_WARPS, attention.INT8_CHUNK_WARPS = shipped
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", action="store_true", help="also time the whole 13B decode step with the best pairs")
    parser.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                        help="the cache's dtype, as XWINBOT_KV_CACHE_DTYPE (auto: bf16)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("decode_attention_configs needs a CUDA GPU")
        sys.exit(1)
    device = torch.device("cuda")
    torch.manual_seed(0)
    shipped_warps = attention.chunk_warps(cache_dtype(args.kv_cache_dtype, torch.bfloat16))
    report: dict = {"device": torch.cuda.get_device_name(), "shipped": [attention.CHUNK, shipped_warps],
                    "kv_cache_dtype": args.kv_cache_dtype, "cases": {}}
    for batch, window in CASES:
        q = torch.randn((batch, HEADS, HEAD_DIM), device=device, dtype=torch.bfloat16)
        positions = torch.randint(window // 2, window, (batch,), device=device, dtype=torch.int64)
        caches = caches_for(batch, window, device, args.kv_cache_dtype)
        shipped_us, reference = time_config(q, caches, positions, window, attention.CHUNK, shipped_warps)
        row = {}
        for chunk in CHUNKS:
            for warps in WARPS:
                try:
                    us, out = time_config(q, caches, positions, window, chunk, warps)
                except Exception as err:  # e.g. out of registers or shared memory for this shape
                    row[f"{chunk}x{warps}"] = {"us": float("inf"), "agree": False, "error": type(err).__name__}
                    continue
                agree = torch.allclose(out.float(), reference.float(), atol=2e-2, rtol=2e-2)
                row[f"{chunk}x{warps}"] = {"us": round(us, 2), "agree": agree}
        best = min((v["us"], k) for k, v in row.items() if v["agree"])
        report["cases"][f"batch {batch} window {window}"] = {"shipped_us": round(shipped_us, 2), "configs": row,
                                                              "best": best[1], "best_us": best[0]}
        print(f"batch {batch:2} window {window:4}: shipped {attention.CHUNK}x{shipped_warps} "
              f"{shipped_us:7.2f} us, best {best[1]:>6} {best[0]:7.2f} us | "
              + " ".join(f"{k} {v['us']:.1f}{'' if v['agree'] else '!'}" for k, v in row.items()), flush=True)
        del caches
        torch.cuda.empty_cache()
    if args.step:
        pairs = {(attention.CHUNK, shipped_warps)} | {
            tuple(map(int, report["cases"][f"batch {b} window 1024"]["best"].split("x"))) for b in (1, 32)}
        report["step_ms"] = step_ms(pairs, args.kv_cache_dtype)
    write_result("decode_attention_configs", report)


if __name__ == "__main__":
    main()
