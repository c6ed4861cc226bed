"""GPU smoke check of the quantized KV caches: a tiny synthetic model, CUDA graphs on, greedy tokens vs a bf16
cache.

Runs the cache in bf16; in unscaled e4m3 (every scale 1.0) and with the per-(layer, kv head) scales the runtime
calibrates at load (what ``XWINBOT_KV_CACHE_DTYPE=fp8`` serves); and in int8 with a scale per (token, kv head)
and K's calibrated channel scales (``XWINBOT_KV_CACHE_DTYPE=int8``), each through the Triton rotary and decode
kernels in CUDA graphs; and the scaled fp8 and the int8 cache once more through PyTorch's SDPA
(``attention="sdpa"``, ``KVCache.read``): the same bytes read by the two paths must give the same tokens, or the
kernel's scaling is wrong. (A random tiny model has near
ties everywhere: its match with bf16 says little about quality, benchmarks/quality/kv_cache_quality.py does.)

    python -m benchmarks.quality.check_kv_cache
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.result_json import write_result
from benchmarks.synthetic_checkpoint import TINY, write_synthetic_checkpoint
from worker.inference.llama_runtime import LlamaRuntime
from worker.inference.sampling import GenerationParams
from worker.kernels.kv_quant import FP8, INT8
from worker.model.loader import load_model

VARIANTS = {  # name: (kv dtype, scaled, attention)
    "bf16": (None, True, "triton"),
    "fp8_unscaled": (FP8, False, "triton"),
    "fp8_scaled": (FP8, True, "triton"),
    "fp8_scaled_sdpa": (FP8, True, "sdpa"),
    "int8": (INT8, True, "triton"),
    "int8_sdpa": (INT8, True, "sdpa"),
}


def greedy_tokens(loaded, prompt: list[int], kv_dtype, scaled: bool, attention: str) -> list[int]:
    runtime = LlamaRuntime(loaded.model, 1024, cuda_graphs=True, kv_dtype=kv_dtype, attention=attention)
    if not scaled:
        runtime.cache.scales.fill_(1.0)
    runtime.warm_up()
    greedy = GenerationParams(temperature=0.0)
    return list(runtime.generate(prompt, 32, greedy))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    path = write_synthetic_checkpoint(Path(tempfile.mkdtemp()) / "tiny", TINY)
    loaded = load_model(path, device="cuda")
    prompt = torch.randint(3, TINY["vocab_size"], (300,), generator=torch.Generator().manual_seed(0)).tolist()
    tokens = {name: greedy_tokens(loaded, prompt, *variant) for name, variant in VARIANTS.items()}

    def matching(a: str, b: str) -> float:
        return sum(x == y for x, y in zip(tokens[a], tokens[b])) / len(tokens[a])

    report = dict(greedy_tokens=len(tokens["bf16"]),
                  fp8_unscaled_tokens_matching_bf16=matching("fp8_unscaled", "bf16"),
                  fp8_scaled_tokens_matching_bf16=matching("fp8_scaled", "bf16"),
                  fp8_scaled_triton_matching_sdpa=matching("fp8_scaled", "fp8_scaled_sdpa"),
                  int8_tokens_matching_bf16=matching("int8", "bf16"),
                  int8_triton_matching_sdpa=matching("int8", "int8_sdpa"))
    shares = ", ".join(f"{k} {v:.0%}" for k, v in report.items() if k != "greedy_tokens")
    print(f"quantized KV caches on {torch.cuda.get_device_name()}: {shares}")
    write_result("check_kv_cache", report)


if __name__ == "__main__":
    main()
