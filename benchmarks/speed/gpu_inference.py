"""Inference-core benchmark (run by hand on the GPU machine; ``--shape tiny`` runs anywhere).

Writes a synthetic GPTQ checkpoint in a model's shape (4-bit, g128, act-order; Xwin-LM-13B by default,
``benchmarks.synthetic_checkpoint.SHAPES``), loads it through the loader and reports: load time, GPU memory,
time to first token for a 500-token prompt, batch-1 decode tokens/s with a 4k-token KV cache, and in the same
run the seed-style baseline (plain HF ``generate``, eager, in a process of its own: ``benchmarks.speed.hf_baseline``).
First it checks the int4 kernel path on this device
against dequantized fp32 references, and a tiny model of each family (Llama-2, and Llama-3 with GQA and its rope
scaling) through the whole runtime against fp32 on the CPU.

Several shapes, comma-separated, run one after the other in the same call, each in its own child process (a
clean GPU: no memory, caches or compiled kernels left by the shape before), and the report puts them side by
side with each one's decode speed over the first's:

    python -m benchmarks.speed.gpu_inference            # 13B shape on the GPU
    python -m benchmarks.speed.gpu_inference --shape xwin13b,llama3-8b --no-hf-baseline llama3-8b
    python -m benchmarks.speed.gpu_inference --shape tiny
    python -m benchmarks.speed.gpu_inference --shape tiny-llama3 --kernels triton   # GQA, llama3 rope, 70k vocab
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.kernels.int4_kernels import check as check_kernels
from benchmarks.result_json import ROOT, write_result
from benchmarks.speed.hf_baseline import measure_in_clean_process
from benchmarks.synthetic_checkpoint import SHAPES, TINY, TINY_LLAMA3, write_synthetic_checkpoint
from worker.inference.kv_cache import KVCache
from worker.inference.llama_runtime import LlamaRuntime, forward
from worker.inference.sampling import GenerationParams
from worker.kernels.kv_quant import cache_dtype
from worker.model.loader import head_dim_of, load_model, pick_device
from worker.settings import KV_CACHE_DTYPES

GIB = 1024**3
KERNELS = ("triton", "tinygemm")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def check_model(device: torch.device, dtype: torch.dtype, int4_kernel: str, shape: dict = TINY) -> float:
    """A small synthetic checkpoint through the whole loader and runtime on this device vs fp32 on the CPU
    (transformers' own forward: its attention, GQA and rotary scaling)."""
    path = write_synthetic_checkpoint(Path(tempfile.mkdtemp()) / "tiny", shape)
    ids = torch.randint(3, shape["vocab_size"], (1, 40))
    with torch.inference_mode():
        ref = load_model(path, device="cpu", dtype=torch.float32).model(ids).logits
        loaded = load_model(path, device=device, dtype=dtype, int4_kernel=int4_kernel)
        config = loaded.config
        cache = KVCache(config.num_hidden_layers, 1, config.num_key_value_heads, 256, head_dim_of(config), device,
                        dtype)
        got = forward(loaded.model, cache, ids.to(device), torch.arange(40, device=device), 256, last_only=False)
    return float((got.float().cpu() - ref).norm() / ref.norm())


def decode_check(device: torch.device, dtype: torch.dtype, shape: dict) -> float:
    """Decode steps (one token at a time: the decode attention kernel on the GPU, GQA, rotary at each position)
    against transformers' forward of the whole sequence in fp32 on the CPU: the last 8 positions' logits."""
    path = write_synthetic_checkpoint(Path(tempfile.mkdtemp()) / "tiny", shape)
    ids = torch.randint(3, shape["vocab_size"], (1, 48))
    with torch.inference_mode():
        ref = load_model(path, device="cpu", dtype=torch.float32).model(ids).logits[0, -8:]
        loaded = load_model(path, device=device, dtype=dtype)
        runtime = LlamaRuntime(loaded.model, 256, cuda_graphs=False)
        model, cache = loaded.model, runtime.cache
        forward(model, cache, ids[:, :40].to(device), torch.arange(40, device=device), 256, last_only=True)
        got = [forward(model, cache, ids[:, i : i + 1].to(device), torch.tensor([i], device=device), 256,
                       last_only=True, decode_kernel=runtime.decode_kernel)[0, -1] for i in range(40, 48)]
    got = torch.stack(got).float().cpu()
    return float((got - ref).norm() / ref.norm())


def attention_variant(loaded, args, prompt: list[int], kernel_tokens: list[int]) -> dict:
    """Batch-1 decode with SDPA instead of ``worker.kernels.decode_attention`` (the default): speed, and greedy tokens
    against the kernel's."""
    runtime = LlamaRuntime(loaded.model, args.context, cuda_graphs=True, attention="sdpa",
                           kv_dtype=cache_dtype(args.kv_cache_dtype, loaded.dtype))
    runtime.warm_up()
    timed_generation(runtime, prompt, 16)
    runs = [timed_generation(runtime, prompt, args.new_tokens) for _ in range(args.repeats)]
    greedy = GenerationParams(temperature=0.0)
    tokens = list(runtime.generate(prompt[:100], 64, greedy))
    same = sum(a == b for a, b in zip(tokens, kernel_tokens)) / len(kernel_tokens)
    return dict(decode_tok_s=statistics.median(r[1] for r in runs), greedy_tokens_matching_kernel=same)


def timed_generation(runtime: LlamaRuntime, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s after it) for one greedy request."""
    greedy = GenerationParams(temperature=0.0)
    sync()
    start = time.perf_counter()
    tokens = runtime.generate(prompt, new_tokens, greedy)
    next(tokens)
    first = time.perf_counter()
    count = 1 + sum(1 for _ in tokens)
    sync()
    end = time.perf_counter()
    return first - start, (count - 1) / (end - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="xwin13b",
                        help=f"one of {', '.join(SHAPES)}, or several comma-separated (each in its own process)")
    parser.add_argument("--dir", help="where to write the checkpoint (default: /dev/shm or a temp dir)")
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--context", type=int, default=4096, help="KV cache length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                        help="the KV cache's dtype, as XWINBOT_KV_CACHE_DTYPE (auto: the model's)")
    parser.add_argument("--kernels", default=",".join(KERNELS),
                        help="int4 kernels to run the model with, comma-separated (default: triton,tinygemm)")
    parser.add_argument("--no-hf-baseline", default="", metavar="SHAPES",
                        help="comma-separated shapes (or 'all') that skip the eager transformers baseline")
    args = parser.parse_args()
    shapes = args.shape.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}: choose from {list(SHAPES)}")
    if len(shapes) > 1:
        return compare_shapes(shapes, args)
    shape = SHAPES[args.shape]
    kernels = [k for k in args.kernels.split(",") if k]
    skip_hf = args.no_hf_baseline.split(",")
    hf_baseline = not ({"all", args.shape} & set(skip_hf))

    device = pick_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "shape": args.shape,
                    "kv_cache_dtype": args.kv_cache_dtype}
    import transformers
    report["transformers"] = transformers.__version__

    checks = check_kernels(device)
    report["kernel_check_max_rel_err"] = max(r["rel_err"] for r in checks)
    print(f"int4 kernel check ({len(checks)} cases): max relative error {report['kernel_check_max_rel_err']:.2e}")
    for kernel in kernels:
        report[f"tiny_model_logits_rel_err_{kernel}"] = check_model(device, dtype, kernel)
        report[f"tiny_llama3_logits_rel_err_{kernel}"] = check_model(device, dtype, kernel, TINY_LLAMA3)
    report["tiny_llama3_decode_steps_rel_err"] = decode_check(device, dtype, TINY_LLAMA3)
    print("tiny models vs fp32 CPU:", {k: v for k, v in report.items() if k.startswith("tiny_")})

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    start = time.perf_counter()
    path = write_synthetic_checkpoint(base / "ckpt", shape)
    report["write_s"] = time.perf_counter() - start
    print(f"wrote synthetic checkpoint in {report['write_s']:.1f} s")

    vocab = shape["vocab_size"]
    prompt = torch.randint(3, vocab, (args.prompt_tokens,)).tolist()
    tokens: dict[str, list[int]] = {}  # greedy tokens of each variant: they should agree
    for kernel in kernels:
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
        runtime = LlamaRuntime(loaded.model, args.context, cuda_graphs=True,
                               kv_dtype=cache_dtype(args.kv_cache_dtype, loaded.dtype))
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
        greedy = GenerationParams(temperature=0.0)
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
        if kernel != kernels[-1]:
            del loaded

    if "runtime_triton" in tokens and "runtime_tinygemm" in tokens:
        same = sum(a == b for a, b in zip(tokens["runtime_triton"], tokens["runtime_tinygemm"]))
        report["greedy_tokens_triton_matching_tinygemm"] = same / len(tokens["runtime_tinygemm"])
    if hf_baseline:  # in a fresh process: nothing of this one (threads, caches, graphs) beside it
        report["hf_generate_eager"] = measure_in_clean_process(str(path), prompt, args.new_tokens, args.repeats)
        print("hf_generate_eager", json.dumps(report["hf_generate_eager"]), flush=True)
        if "runtime_triton" in report and "decode_tok_s" in report["hf_generate_eager"]:
            report["speedup_vs_eager_hf"] = (report["runtime_triton"]["decode_tok_s"]
                                             / report["hf_generate_eager"]["decode_tok_s"])
    else:
        report["hf_generate_eager"] = "skipped (--no-hf-baseline)"

    print("\n| metric | value |\n|---|---|")
    for key in ("device", "torch", "transformers", "shape", "kernel_check_max_rel_err",
                "tiny_model_logits_rel_err_triton", "tiny_llama3_logits_rel_err_triton",
                "tiny_llama3_decode_steps_rel_err", "greedy_tokens_triton_matching_tinygemm", "speedup_vs_eager_hf"):
        if key in report:
            value = report[key]
            print(f"| {key} | {value:.3g} |" if isinstance(value, float) else f"| {key} | {value} |")
    for name in ("runtime_triton", "runtime_tinygemm", "hf_generate_eager"):
        if isinstance(report.get(name), dict):
            for key, value in report[name].items():
                print(f"| {name}.{key} | {value:.2f} |")
    write_result("gpu_inference", report)


def compare_shapes(shapes: list[str], args) -> None:
    """Each shape in its own child process, one after the other (the same card, the same call); one report with
    every shape's and the decode speed of each over the first's."""
    passed = ["--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--context",
              str(args.context), "--repeats", str(args.repeats), "--kernels", args.kernels,
              "--kv-cache-dtype", args.kv_cache_dtype,
              "--no-hf-baseline", args.no_hf_baseline]
    report: dict = {"shapes": shapes, "per_shape": {}}
    for shape in shapes:
        out = tempfile.mkdtemp()
        command = [sys.executable, "-u", "-m", "benchmarks.speed.gpu_inference", "--shape", shape, *passed]
        if args.dir:
            command += ["--dir", str(Path(args.dir) / shape)]
        print(f"== {shape}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        child = subprocess.run(command, cwd=ROOT, env={**os.environ, "OUT": out})
        result = Path(out, "gpu_inference.json")
        if child.returncode != 0 or not result.exists():
            report["per_shape"][shape] = f"failed: exit {child.returncode}"
            continue
        report["per_shape"][shape] = json.loads(result.read_text())
        report["per_shape"][shape]["process_s"] = time.perf_counter() - start
    first = report["per_shape"].get(shapes[0])
    summary = {}
    for shape in shapes:
        row = report["per_shape"].get(shape)
        triton = row.get("runtime_triton") if isinstance(row, dict) else None
        if not triton:
            continue
        summary[shape] = dict(decode_tok_s=triton["decode_tok_s"], ttft_ms=triton["ttft_ms"],
                              long_decode_tok_s=triton["long_decode_tok_s"], weights_gib=triton.get("weights_gib"),
                              peak_gb=triton.get("peak_gb"))
        if isinstance(first, dict) and first.get("runtime_triton"):
            ratio = triton["decode_tok_s"] / first["runtime_triton"]["decode_tok_s"]
            summary[shape]["decode_vs_" + shapes[0]] = ratio
    report["summary"] = summary
    print(f"\n| shape | decode tok/s | vs {shapes[0]} | TTFT ms | long-prompt decode tok/s | weights GiB | peak GB |")
    print("|---|---|---|---|---|---|---|")
    for shape, row in summary.items():
        print(f"| {shape} | {row['decode_tok_s']:.1f} | {row.get('decode_vs_' + shapes[0], float('nan')):.3f} | "
              f"{row['ttft_ms']:.1f} | {row['long_decode_tok_s']:.1f} | {row['weights_gib'] or 0:.2f} | "
              f"{row['peak_gb'] or 0:.2f} |")
    write_result("gpu_inference", report)


if __name__ == "__main__":
    main()
