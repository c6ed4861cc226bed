"""Where a whole decode step's GPU time goes: the 13B-shaped model, CUDA graphs on, as the worker decodes.

Replays the captured decode step (batch 1 and 32, attention window 1,024; attention by SDPA and by
``worker.decode_attention``) under the profiler and prints the GPU time of each kernel family per step, their
sum against the step's wall time (the gap is launch overhead inside the graph) and the same step's time
without the profiler.

    python benchmarks/profile_decode.py            # ~1.5 min on an H200; JSON into $OUT when set
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from int4_kernels import replay_ms  # noqa: E402
from synthetic_checkpoint import XWIN_13B, write_synthetic_checkpoint  # noqa: E402

from worker.llama_runtime import LlamaRuntime  # noqa: E402
from worker.loader import load_model  # noqa: E402

FAMILIES = [  # (label, pattern on the kernel name): the first match names the kernel's family
    ("int4 one row", r"_gemv_kernel"), ("int4 2-32 rows", r"_swap_dot_kernel"), ("int4 33-64 rows", r"_unpacked_dot"),
    ("add+RMSNorm", r"_add_rms_norm"), ("rotary + K/V write", r"_rotary_into_cache"), ("SiLU*mul", r"_silu_mul"),
    ("attention", r"sdpa|flash|fmha|attention|lean_reduction|_chunk_kernel|_combine_kernel"), ("gather (act-order)", r"index_elementwise|gather"),
    ("lm_head (bf16 GEMM)", r"nvjet|gemm|cutlass|sm90_xmma"), ("sampling", r"topk|sort|softmax|multinomial|argmax|reduce"),
]


def family(name: str) -> str:
    return next((label for label, pattern in FAMILIES if re.search(pattern, name, re.IGNORECASE)), "other: " + name[:60])


def profile(graph, replays: int = 20) -> dict[str, float]:
    """GPU µs per step for each kernel family, from the profiler's kernel records."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    per_family: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.device_time_total > 0 and event.key not in ("cudaGraphLaunch",):
            per_family[family(event.key)] += event.device_time_total / replays
    return dict(sorted(per_family.items(), key=lambda item: -item[1]))


def main() -> None:
    path = write_synthetic_checkpoint(Path(tempfile.mkdtemp(dir="/dev/shm")) / "ckpt", XWIN_13B)
    loaded = load_model(path, device="cuda")
    report = {"device": torch.cuda.get_device_name()}
    for batch in (1, 32):
        for attention in ("sdpa", "triton"):  # scaled_dot_product_attention, or worker.decode_attention
            runtime = LlamaRuntime(loaded.model, 2048, max_batch=batch, cuda_graphs=True, attention=attention)
            start = time.perf_counter()
            graph = runtime.graphs.get(batch, 1024)
            runtime.step_input[1, :batch].fill_(900)  # every row 900 tokens into its conversation
            families = profile(graph)
            row = dict(capture_s=time.perf_counter() - start, step_ms=replay_ms(graph, 50),
                       kernels_ms=sum(families.values()) / 1000, per_family_us=families)
            report[f"batch_{batch}_{attention}"] = row
            print(f"batch {batch}, attention {attention}: step {row['step_ms']:.2f} ms, kernels "
                  f"{row['kernels_ms']:.2f} ms ({batch / row['step_ms'] * 1000:.0f} tok/s)", flush=True)
            for label, us in families.items():
                print(f"  {us / 1000:7.3f} ms  {label}", flush=True)
            del runtime, graph
            torch.cuda.empty_cache()
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "profile_decode.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
