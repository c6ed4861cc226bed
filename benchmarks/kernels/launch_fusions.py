"""The one-launch add+RMSNorm and decode attention against the two launches each replaced, on the GPU.

For each case: µs per call of the old path (``two_pass=True``: the residual add then the scaling; the chunks
then a merge launch) and of the new one, each timed as a CUDA graph of many calls (as decode steps replay
them, so the time includes each kernel's launch and drain inside a graph, which is what the fusion saves),
and whether their outputs agree. The one-launch attention is also checked after the timing replays: its
output buffer is poisoned and replayed once more (a ticket counter left over would leave it unwritten), and
the counters must all be back at 0.

    python3 -m benchmarks.kernels.launch_fusions      # ~1 min on an H200; JSON into $OUT/launch_fusions.json

Shapes: Llama-13B's (width 5120, 40 heads of 128). The norm reads partial sums of 4 splits (fp32) or 1 (bf16), as
the int4 matmul before it hands over, and writes x in a random act-order, as for a GPTQ layer. The attention
rows all sit at the end of their window (every chunk holds entries), and the caches cycle through enough
copies that they come from memory, not from the L2 cache the previous call left warm, as in a step.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from benchmarks.kernels.int4_kernels import replay_ms
from benchmarks.result_json import write_result
from worker.kernels import decode_attention as attention
from worker.kernels import layer_kernels

WIDTH, HEADS, HEAD_DIM = 5120, 40, 128  # Llama-13B
LAYERS = 40
NORMS_PER_STEP = 2 * LAYERS + 1  # before attention and MLP in each layer, and the final norm
CALLS, REPLAYS = 50, 20  # calls captured per graph, graph replays timed


def graph_of(calls):
    """A CUDA graph of ``calls`` (functions returning a tensor), after two warm-up runs on a side stream;
    returns (graph, the last call's output as captured: the graph's replays write it)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            last = call()
    graph.replay()
    torch.cuda.synchronize()
    return graph, last


def time_calls(calls) -> tuple[float, torch.cuda.CUDAGraph, torch.Tensor]:
    graph, last = graph_of(calls)
    return replay_ms(graph, REPLAYS) * 1000 / len(calls), graph, last


def bf16_steps(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference in units of bf16's step at b's size (1: one rounding apart); values under a
    thousandth of b's largest count as that size, so a last-bit difference at ~0 is not read as a large one."""
    scale = b.float().abs().clamp_min(1e-3 * float(b.float().abs().max())) * 2.0**-7
    return float(((a.float() - b.float()).abs() / scale).max())


def norm_case(rows: int, split: int, device) -> dict:
    g = torch.Generator(device=device).manual_seed(rows * 10 + split)
    h = torch.randn(rows, WIDTH, device=device, generator=g).bfloat16()
    delta = torch.randn(split, rows, WIDTH, device=device, generator=g)
    delta = delta if split > 1 else delta.bfloat16()
    weight = (1 + 0.2 * torch.randn(WIDTH, device=device, generator=g)).bfloat16()
    order = torch.randperm(WIDTH, device=device, generator=g)
    row = dict(kernel="add_rms_norm", rows=rows, width=WIDTH, split=split)
    outs = {}
    for name, two_pass in (("old", True), ("new", False)):
        def call(two_pass=two_pass):
            return layer_kernels.add_rms_norm(h, delta, weight, 1e-5, order, two_pass=two_pass)
        outs[name] = call()
        row[f"{name}_us"], _, _ = time_calls([call] * CALLS)
    row["h_equal"] = torch.equal(outs["new"][0], outs["old"][0])
    row["x_max_bf16_steps"] = bf16_steps(outs["new"][1], outs["old"][1])
    row["agree"] = row["h_equal"] and row["x_max_bf16_steps"] <= 1.0  # the squares' sum in another order
    return row


def attention_case(batch: int, window: int, device) -> dict:
    g = torch.Generator(device=device).manual_seed(batch * 10000 + window)
    cache_bytes = 2 * batch * HEADS * window * HEAD_DIM * 2  # K and V, bf16
    copies = max(2, math.ceil(256e6 / cache_bytes))  # past the 60 MB L2, as 40 layers' caches are
    keys = torch.randn(copies, batch, HEADS, window, HEAD_DIM, device=device, generator=g).bfloat16()
    values = torch.randn(copies, batch, HEADS, window, HEAD_DIM, device=device, generator=g).bfloat16()
    q = torch.randn(batch, HEADS, HEAD_DIM, device=device, generator=g).bfloat16()
    positions = torch.full((batch,), window - 1, device=device, dtype=torch.long)
    order_inverse = torch.argsort(torch.randperm(HEADS * HEAD_DIM, device=device, generator=g))
    scale = HEAD_DIM**-0.5
    row = dict(kernel="decode_attention", batch=batch, heads=HEADS, head_dim=HEAD_DIM, window=window,
               cache_copies=copies)
    outs = {}
    for name, two_pass in (("old", True), ("new", False)):
        calls = [lambda c=c, two_pass=two_pass: attention.decode_attention(
            q, keys[c], values[c], positions, window, scale, order_inverse, two_pass=two_pass)
            for c in (i % copies for i in range(CALLS))]
        outs[name] = calls[-1]()
        row[f"{name}_us"], graph, last = time_calls(calls)
        if not two_pass:  # the replays left every counter at 0 and still merge: poison the output, replay once
            last.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            row["replayed_equal"] = torch.equal(last, outs["new"])
            row["tickets_zero"] = not bool(attention._tickets[q.device].any())
    row["max_abs_diff"] = float((outs["new"].float() - outs["old"].float()).abs().max())  # 0 expected: the same
    # merge of the same chunks; a last-bit difference would come from the compiler contracting them differently
    row["agree"] = bf16_steps(outs["new"], outs["old"]) <= 1.0 and row["replayed_equal"] and row["tickets_zero"]
    return row


def show(row: dict) -> None:
    case = (f"rows {row['rows']:>2} split {row['split']}" if row["kernel"] == "add_rms_norm"
            else f"batch {row['batch']:>2} window {row['window']:>4}")
    print(f"{row['kernel']:<16} {case:<22} old {row['old_us']:7.2f} us  new {row['new_us']:7.2f} us  "
          f"saved {row['old_us'] - row['new_us']:6.2f} us  agree {row['agree']}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    if not torch.cuda.is_available():
        print("launch_fusions times kernel launches on a CUDA GPU; there is none here.")
        return 1
    device = torch.device("cuda")
    rows = []
    for n_rows in (1, 32):
        for split in (4, 1):
            rows.append(norm_case(n_rows, split, device))
            show(rows[-1])
    for batch in (1, 32):
        for window in (256, 1024, 4096):
            rows.append(attention_case(batch, window, device))
            show(rows[-1])
            torch.cuda.empty_cache()  # the case's cache copies (up to 5 GiB at batch 32) before the next one's
    # What a batch-1 13B step would save, from the split-4 norm and the 1024 window (other splits and windows
    # are in the rows above): an estimate to check against a step profile, not a measurement of one.
    norm = next(r for r in rows if r["kernel"] == "add_rms_norm" and r["rows"] == 1 and r["split"] == 4)
    attn = next(r for r in rows if r["kernel"] == "decode_attention" and r["batch"] == 1 and r["window"] == 1024)
    saved_us = NORMS_PER_STEP * (norm["old_us"] - norm["new_us"]) + LAYERS * (attn["old_us"] - attn["new_us"])
    print(f"13B batch-1 step estimate: {NORMS_PER_STEP} norms + {LAYERS} attentions -> {saved_us:.0f} us saved",
          flush=True)
    agree = all(r["agree"] for r in rows)
    print(f"check: old and new agree in every case: {agree}", flush=True)
    write_result("launch_fusions", dict(calls_per_graph=CALLS, replays=REPLAYS, cases=rows,
                                        step_estimate_batch1_saved_us=saved_us, all_agree=agree))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
