"""Why is compiled decoding slow? Time eager, manual CUDA graph and torch.compile steps on a 4-layer slice."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_checkpoint import XWIN_13B, write_synthetic_checkpoint  # noqa: E402

from worker.llama_runtime import KVCache, decode_one_token  # noqa: E402
from worker.loader import load_model  # noqa: E402
from worker.sampling import GenerationParams, SamplingTensors  # noqa: E402


def per_step(fn, n=50):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


path = write_synthetic_checkpoint(Path(tempfile.mkdtemp(dir="/dev/shm")) / "c", dict(XWIN_13B, num_hidden_layers=4))
loaded = load_model(path, device="cuda")
cfg = loaded.config
cache = KVCache(4, 1, 40, 4096, 128, "cuda", torch.bfloat16)
s = SamplingTensors.of([GenerationParams(temperature=0.0)], torch.device("cuda"))
token = torch.tensor([[5]], device="cuda")
pos = torch.tensor([600], device="cuda")
args = (loaded.model, cache, token, pos, s.temperature, s.top_k, s.top_p)
with torch.inference_mode():
    print(f"eager: {per_step(lambda: decode_one_token(*args)):.0f} µs/step")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            decode_one_token(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_one_token(*args)
    print(f"manual cuda graph: {per_step(graph.replay):.0f} µs/step")
    compiled = torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True)
    t = time.perf_counter()
    for _ in range(3):
        compiled(*args)
    torch.cuda.synchronize()
    print(f"compile: {time.perf_counter() - t:.1f} s")
    print(f"torch.compile reduce-overhead: {per_step(lambda: compiled(*args)):.0f} µs/step")
    compiled_default = torch.compile(decode_one_token, fullgraph=True)
    for _ in range(3):
        compiled_default(*args)
    print(f"torch.compile default (no graphs): {per_step(lambda: compiled_default(*args)):.0f} µs/step")
