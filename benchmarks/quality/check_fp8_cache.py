"""GPU smoke check of the fp8 KV cache: a tiny synthetic model, CUDA graphs on, greedy tokens vs a bf16 cache.

    python -m benchmarks.quality.check_fp8_cache
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.result_json import write_result
from benchmarks.synthetic_checkpoint import TINY, write_synthetic_checkpoint
from worker.inference.llama_runtime import FP8, LlamaRuntime
from worker.inference.sampling import GenerationParams, SamplingTensors
from worker.model.loader import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    path = write_synthetic_checkpoint(Path(tempfile.mkdtemp()) / "tiny", TINY)
    loaded = load_model(path, device="cuda")
    prompt = torch.randint(3, TINY["vocab_size"], (300,)).tolist()
    tokens = {}
    for name, kv_dtype in (("bf16", None), ("fp8", FP8)):
        runtime = LlamaRuntime(loaded.model, 1024, cuda_graphs=True, kv_dtype=kv_dtype)
        runtime.warm_up()
        greedy = SamplingTensors.of([GenerationParams(temperature=0.0)], runtime.device)
        tokens[name] = list(runtime.generate(prompt, 32, greedy))
    same = sum(a == b for a, b in zip(tokens["bf16"], tokens["fp8"])) / len(tokens["bf16"])
    print(f"fp8 cache on {torch.cuda.get_device_name()}: {same:.0%} of 32 greedy tokens as with bf16")
    write_result("check_fp8_cache", dict(greedy_tokens=len(tokens["bf16"]), fp8_tokens_matching_bf16=same))


if __name__ == "__main__":
    main()
