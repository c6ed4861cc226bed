"""Decode steps captured as CUDA graphs: one graph per attention window, static input buffers.

A captured step replays every kernel of the 40-layer forward with one launch, which is what makes batch-1
decoding fast: the eager step is bound by Python and kernel-launch overhead, not by the GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class DecodeGraph:
    def __init__(self, step: Callable, model: nn.Module, cache, window: int):
        device = cache.keys.device
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)
        # Warm-up and capture write K/V at the last slot: it is masked out until a real step overwrites it.
        self.input_pos = torch.full((1,), cache.max_len - 1, dtype=torch.long, device=device)
        self.temperature = torch.zeros(1, device=device)
        self.top_k = torch.zeros(1, dtype=torch.long, device=device)
        self.top_p = torch.ones(1, device=device)

        def run():
            return step(model, cache, self.token, self.input_pos, window, self.temperature, self.top_k, self.top_p)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # initialises lazy state (cuBLAS/cuDNN handles, plans) outside the capture
                run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = run()

    def run(self, token: torch.Tensor, input_pos: torch.Tensor, sampling) -> torch.Tensor:
        self.token.copy_(token)
        self.input_pos.copy_(input_pos)
        self.temperature.copy_(sampling.temperature)
        self.top_k.copy_(sampling.top_k)
        self.top_p.copy_(sampling.top_p)
        self.graph.replay()
        return self.output


class DecodeGraphs:
    """Captured lazily per window; ``LlamaRuntime.warm_up`` captures them all at start."""

    def __init__(self, step: Callable, model: nn.Module, cache):
        self.step, self.model, self.cache = step, model, cache
        self.by_window: dict[int, DecodeGraph] = {}

    def get(self, window: int) -> DecodeGraph:
        if window not in self.by_window:
            self.by_window[window] = DecodeGraph(self.step, self.model, self.cache, window)
        return self.by_window[window]
