"""Inference-core benchmark (run by hand on the GPU machine; ``--shape tiny`` runs anywhere).

Writes a synthetic GPTQ checkpoint in the Xwin-LM-13B shape (4-bit, g128, act-order), loads it through the
loader and reports: load time, GPU memory, time to first token for a 500-token prompt, batch-1 decode
tokens/s with a 4k-token KV cache, and in the same run the seed-style baseline (plain HF ``generate``, eager).
First it checks the int4 kernel path on this device against dequantized fp32 references.

    python -m benchmarks.speed.gpu_inference            # 13B shape on the GPU
    python -m benchmarks.speed.gpu_inference --shape tiny
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.kernels.int4_kernels import check as check_kernels
from benchmarks.result_json import write_result
from benchmarks.synthetic_checkpoint import TINY, XWIN_13B, write_synthetic_checkpoint
from worker.inference.llama_runtime import KVCache, LlamaRuntime, forward
from worker.inference.sampling import GenerationParams, SamplingTensors
from worker.model.loader import load_model, pick_device

GIB = 1024**3
KERNELS = ("triton", "tinygemm")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def check_model(device: torch.device, dtype: torch.dtype, int4_kernel: str) -> float:
    """A small synthetic checkpoint through the whole loader and runtime on this device vs fp32 on the CPU."""
    path = write_synthetic_checkpoint(Path(tempfile.mkdtemp()) / "tiny", TINY)
    ids = torch.randint(3, TINY["vocab_size"], (1, 40))
    with torch.inference_mode():
        ref = load_model(path, device="cpu", dtype=torch.float32).model(ids).logits
        loaded = load_model(path, device=device, dtype=dtype, int4_kernel=int4_kernel)
        cache = KVCache(TINY["num_hidden_layers"], 1, TINY["num_key_value_heads"], 256, 64, device, dtype)
        got = forward(loaded.model, cache, ids.to(device), torch.arange(40, device=device), 256, last_only=False)
    return float((got.float().cpu() - ref).norm() / ref.norm())


def attention_variant(loaded, args, prompt: list[int], kernel_tokens: list[int]) -> dict:
    """Batch-1 decode with SDPA instead of ``worker.kernels.decode_attention`` (the default): speed, and greedy tokens
    against the kernel's."""
    runtime = LlamaRuntime(loaded.model, args.context, cuda_graphs=True, attention="sdpa")
    runtime.warm_up()
    timed_generation(runtime, prompt, 16)
    runs = [timed_generation(runtime, prompt, args.new_tokens) for _ in range(args.repeats)]
    greedy = SamplingTensors.of([GenerationParams(temperature=0.0)], runtime.device)
    tokens = list(runtime.generate(prompt[:100], 64, greedy))
    same = sum(a == b for a, b in zip(tokens, kernel_tokens)) / len(kernel_tokens)
    return dict(decode_tok_s=statistics.median(r[1] for r in runs), greedy_tokens_matching_kernel=same)


def timed_generation(runtime: LlamaRuntime, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s after it) for one greedy request."""
    sampling = SamplingTensors.of([GenerationParams(temperature=0.0)], runtime.device)
    sync()
    start = time.perf_counter()
    tokens = runtime.generate(prompt, new_tokens, sampling)
    next(tokens)
    first = time.perf_counter()
    count = 1 + sum(1 for _ in tokens)
    sync()
    end = time.perf_counter()
    return first - start, (count - 1) / (end - first)


def hf_generate(model, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    ids = torch.tensor([prompt], device=model.device)
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        sync()
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        sync()
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        sync()
        total = time.perf_counter() - start
    return ttft, (new_tokens - 1) / (total - ttft)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["xwin13b", "tiny"], default="xwin13b")
    parser.add_argument("--dir", help="where to write the checkpoint (default: /dev/shm or a temp dir)")
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--context", type=int, default=4096, help="KV cache length")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = pick_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "shape": args.shape}
    import transformers
    report["transformers"] = transformers.__version__

    checks = check_kernels(device)
    report["kernel_check_max_rel_err"] = max(r["rel_err"] for r in checks)
    print(f"int4 kernel check ({len(checks)} cases): max relative error {report['kernel_check_max_rel_err']:.2e}")
    for kernel in KERNELS:
        report[f"tiny_model_logits_rel_err_{kernel}"] = check_model(device, dtype, kernel)
    print("tiny model vs fp32 CPU:", {k: report[f"tiny_model_logits_rel_err_{k}"] for k in KERNELS})

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    start = time.perf_counter()
    path = write_synthetic_checkpoint(base / "ckpt", XWIN_13B if args.shape == "xwin13b" else TINY)
    report["write_s"] = time.perf_counter() - start
    print(f"wrote synthetic checkpoint in {report['write_s']:.1f} s")

    vocab = XWIN_13B["vocab_size"] if args.shape == "xwin13b" else TINY["vocab_size"]
    prompt = torch.randint(3, vocab, (args.prompt_tokens,)).tolist()
    tokens: dict[str, list[int]] = {}  # greedy tokens of each variant: they should agree
    for kernel in KERNELS:
        name = f"runtime_{kernel}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        loaded = load_model(path, device=device, int4_kernel=kernel)
        sync()
        row = report[name] = dict(load_s=time.perf_counter() - start)
        if device.type == "cuda":
            row["weights_gib"] = torch.cuda.memory_allocated() / GIB
        start = time.perf_counter()
        runtime = LlamaRuntime(loaded.model, args.context, cuda_graphs=True)
        if device.type == "cuda":
            row["kv_cache_gb"] = (torch.cuda.memory_allocated() - row["weights_gib"] * GIB) / 1e9
        runtime.warm_up()  # captures every attention window's decode graph, compiles the kernels
        if device.type == "cuda":  # what warm-up keeps: the graphs' memory pools, the rebuild scratch
            kept = torch.cuda.memory_allocated() - row["weights_gib"] * GIB
            row["kept_after_warmup_gb"] = kept / 1e9 - row["kv_cache_gb"]
        timed_generation(runtime, prompt, 16)
        row["warmup_s"] = time.perf_counter() - start
        runs = [timed_generation(runtime, prompt, args.new_tokens) for _ in range(args.repeats)]
        long_prompt = torch.randint(3, vocab, (args.context - args.new_tokens - 300,)).tolist()
        long_ttft, long_decode = timed_generation(runtime, long_prompt, args.new_tokens)
        greedy = SamplingTensors.of([GenerationParams(temperature=0.0)], runtime.device)
        tokens[name] = list(runtime.generate(prompt[:100], 64, greedy))
        row.update(
            ttft_ms=statistics.median(r[0] for r in runs) * 1000,
            decode_tok_s=statistics.median(r[1] for r in runs),
            long_prompt_tokens=len(long_prompt),
            long_ttft_ms=long_ttft * 1000,
            long_decode_tok_s=long_decode,
        )
        if device.type == "cuda":  # batch 1, a {args.context}-token cache, a prompt filling most of it
            row["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
            row["reserved_gb"] = torch.cuda.memory_reserved() / 1e9
        print(name, json.dumps(row), flush=True)
        del runtime
        if kernel == "triton" and device.type == "cuda":  # the same model with SDPA for decode attention
            report["decode_attention_sdpa"] = attention_variant(loaded, args, prompt, tokens[name])
            print("decode_attention_sdpa", json.dumps(report["decode_attention_sdpa"]), flush=True)
        if kernel != KERNELS[-1]:
            del loaded

    same = sum(a == b for a, b in zip(tokens["runtime_triton"], tokens["runtime_tinygemm"]))
    report["greedy_tokens_triton_matching_tinygemm"] = same / len(tokens["runtime_tinygemm"])
    hf_generate(loaded.model, prompt[:32], 8)  # warm-up
    runs = [hf_generate(loaded.model, prompt, args.new_tokens) for _ in range(args.repeats)]
    report["hf_generate_eager"] = dict(
        ttft_ms=statistics.median(r[0] for r in runs) * 1000, decode_tok_s=statistics.median(r[1] for r in runs)
    )
    print("hf_generate_eager", json.dumps(report["hf_generate_eager"]))
    report["speedup_vs_eager_hf"] = (report["runtime_triton"]["decode_tok_s"]
                                     / report["hf_generate_eager"]["decode_tok_s"])

    print("\n| metric | value |\n|---|---|")
    for key in ("device", "torch", "transformers", "kernel_check_max_rel_err", "tiny_model_logits_rel_err_triton",
                "greedy_tokens_triton_matching_tinygemm", "speedup_vs_eager_hf"):
        if key in report:
            value = report[key]
            print(f"| {key} | {value:.3g} |" if isinstance(value, float) else f"| {key} | {value} |")
    for name in ("runtime_triton", "runtime_tinygemm", "hf_generate_eager"):
        for key, value in report.get(name, {}).items():
            print(f"| {name}.{key} | {value:.2f} |")
    write_result("gpu_inference", report)


if __name__ == "__main__":
    main()
