"""Where a whole decode step's GPU time goes: the 13B-shaped model, CUDA graphs on, as the worker decodes.

Replays the captured decode step (batch 1 and 32, attention window 1,024; attention by SDPA and by
``worker.kernels.decode_attention``) under the profiler and prints the GPU time and launches of each kernel family per
step, their sum against the step's wall time (the gap is launch overhead inside the graph) and the same step's
time without the profiler. Then the same for prefill passes (one 512-token prompt, 8 of 512 together, 32 of 64),
each run eagerly and replayed from a captured graph (``worker.inference.prefill_graph``, every shape captured
first and the capture timed), and one layer's prompt matmul (gate/up, 4,096 rows) called eagerly and replayed:
a replayed pass of many rows ran slower than the eager one (benchmarks/NOTES.md rows 74-75), and the kernels
said where.

    python -m benchmarks.speed.profile_decode            # ~2 min on an H200; JSON into $OUT when set
    python -m benchmarks.speed.profile_decode --prefill-only
    python -m benchmarks.speed.profile_decode --decode-only --attention triton   # the steps as the worker runs them
"""

from __future__ import annotations

import argparse
import functools
import gc
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.kernels.int4_kernels import replay_ms
from benchmarks.result_json import write_result
from benchmarks.synthetic_checkpoint import XWIN_13B, write_synthetic_checkpoint
from worker.inference.decode_graph import CapturedStep
from worker.inference.llama_runtime import LlamaRuntime
from worker.model.loader import load_model

FAMILIES = [  # (label, pattern on the kernel name): the first match names the kernel's family
    ("int4 one row", r"_gemv_kernel"), ("int4 2-32 rows", r"_swap_dot_kernel|copy_warp_swap_kernel"),
    ("int4 33-64 rows", r"_unpacked_dot"),
    ("add+RMSNorm", r"_add_residual|_rms_scale"), ("rotary + K/V write", r"_rotary_into_cache"),
    ("SiLU*mul", r"_silu_mul"),
    ("attention", r"sdpa|flash|fmha|attention|lean_reduction|_chunk_kernel|_combine_kernel"),
    ("gather (act-order)", r"index_elementwise|gather"), ("rebuild W (prefill)", r"_dequantize_kernel"),
    ("lm_head / prefill GEMM (bf16)", r"nvjet|gemm|cutlass|sm90_xmma"),
    ("sampling", r"topk|sort|softmax|multinomial|argmax|reduce"),
]


def family(name: str) -> str:
    return next((label for label, pattern in FAMILIES if re.search(pattern, name, re.IGNORECASE)),
                "other: " + name[:110])


def profile(step, replays: int = 20) -> dict[str, list[float]]:
    """[GPU µs, launches] per call of ``step`` for each kernel family, from the profiler's kernel records."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            step()
        torch.cuda.synchronize()
    per_family: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for event in prof.key_averages():
        if event.device_time_total > 0 and event.key not in ("cudaGraphLaunch",):
            row = per_family[family(event.key)]
            row[0] += event.device_time_total / replays
            row[1] += event.count / replays
    return dict(sorted(per_family.items(), key=lambda item: -item[1][0]))


def show(families: dict[str, list[float]]) -> None:
    for label, (us, launches) in families.items():
        print(f"  {us / 1000:7.3f} ms  {launches:5.0f} launches  {label}", flush=True)


PREFILL_SHAPES = ((1, 512), (8, 512), (32, 64))  # (prompts, tokens each): a lone prompt, two GPU-bound bursts


def wall_ms(step, repeats: int = 5) -> float:
    """Milliseconds per call of ``step`` (which reads its result back, as a prefill pass does), after one call."""
    step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / repeats


def profile_prefill(model) -> dict:
    """Each of PREFILL_SHAPES eager and captured: wall time and GPU time per kernel family; then one matmul."""
    report = {}
    runtime = LlamaRuntime(model, 2048, max_batch=32, cuda_graphs=True)
    captured = runtime.prefill_graphs
    start = time.perf_counter()
    with torch.inference_mode():
        captured.capture_all()  # every shape: the worker's start captures the smaller, its idle time the rest
    steps = [step.seconds for step, _ in captured.captured.values()]
    report["prefill_capture_all"] = dict(shapes=len(steps), seconds=time.perf_counter() - start,
                                         warm_up_s=sum(s["warm_up"] for s in steps),
                                         capture_s=sum(s["capture"] for s in steps))
    print(f"captured {len(captured.captured)} prefill passes in {time.perf_counter() - start:.1f} s", flush=True)
    for prompts, length in PREFILL_SHAPES:
        group = [[3 + (7 * i + p) % 30000 for i in range(length)] for p in range(prompts)]
        step = functools.partial(runtime.prefill_prompts, 0, group)
        for mode, graphs in (("eager", None), ("captured", captured)):
            runtime.prefill_graphs = graphs
            ms = wall_ms(step)
            families = profile(step, replays=3)
            kernels = sum(us for us, _ in families.values()) / 1000
            report[f"prefill_{prompts}x{length}_{mode}"] = dict(wall_ms=ms, kernels_ms=kernels,
                                                               tok_s=prompts * length / ms * 1000,
                                                               per_family_us_launches=families)
            print(f"prefill {prompts} x {length} tokens, {mode}: {ms:.1f} ms, kernels {kernels:.1f} ms", flush=True)
            show(families)
    layer = model.model.layers[0].mlp.gate_up_proj
    x = torch.randn(4096, layer.in_features, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        eager = wall_ms(lambda: layer.partials(x), repeats=20)
        replayed = replay_ms(CapturedStep(lambda: layer.partials(x)), 20)
    report["gate_up_4096_rows_ms"] = dict(eager=eager, captured=replayed)
    print(f"gate/up matmul, 4,096 rows: eager {eager:.2f} ms, captured {replayed:.2f} ms", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefill-only", action="store_true", help="skip the decode steps")
    parser.add_argument("--decode-only", action="store_true", help="skip the prefill passes")
    parser.add_argument("--attention", nargs="+", choices=("sdpa", "triton"), default=["sdpa", "triton"],
                        help="decode attention: scaled_dot_product_attention, worker.kernels.decode_attention")
    args = parser.parse_args()
    path = write_synthetic_checkpoint(Path(tempfile.mkdtemp(dir="/dev/shm")) / "ckpt", XWIN_13B)
    loaded = load_model(path, device="cuda")
    report = {"device": torch.cuda.get_device_name()}
    for batch in () if args.prefill_only else (1, 32):
        for attention in args.attention:
            runtime = LlamaRuntime(loaded.model, 2048, max_batch=batch, cuda_graphs=True, attention=attention)
            start = time.perf_counter()
            graph = runtime.graphs.get(batch, 1024)
            runtime.step_input[1, :batch].fill_(900)  # every row 900 tokens into its conversation
            families = profile(graph.replay)
            row = dict(capture_s=time.perf_counter() - start, step_ms=replay_ms(graph, 50),
                       kernels_ms=sum(us for us, _ in families.values()) / 1000, per_family_us_launches=families)
            report[f"batch_{batch}_{attention}"] = row
            print(f"batch {batch}, attention {attention}: step {row['step_ms']:.2f} ms, kernels "
                  f"{row['kernels_ms']:.2f} ms ({batch / row['step_ms'] * 1000:.0f} tok/s)", flush=True)
            show(families)
            del runtime, graph
            gc.collect()  # the runtime's graphs sit in reference cycles: else two 32-row caches overflow an H100
            torch.cuda.empty_cache()
    if not args.decode_only:
        report.update(profile_prefill(loaded.model))
    write_result("profile_decode", report)


if __name__ == "__main__":
    main()
