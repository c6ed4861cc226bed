"""Decode steps captured as CUDA graphs: one graph per (batch bucket, attention window).

A captured step replays every kernel of the 40-layer forward with one launch, which is what makes decoding
fast: the eager step is bound by Python and kernel-launch overhead, not by the GPU. A graph reads its inputs
(tokens, positions, sampling settings) from static buffers the runtime owns, and writes its sampled tokens back
there as the next replay's inputs.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import torch

StepFactory = Callable[[int, int], Callable[[], torch.Tensor]]  # (batch, window) -> a step on static buffers


class CapturedStep:
    """A step captured as a CUDA graph (a decode step here, a prefill pass in ``worker.inference.prefill_graph``):
    run ``warm_up_runs`` times on a side stream first, then captured into ``pool``. ``seconds``: how long the
    warm-up runs and the capture (with the graph's instantiation) took on the host."""

    def __init__(self, step: Callable[[], torch.Tensor], pool=None, side: torch.cuda.Stream | None = None,
                 warm_up_runs: int = 2):
        started = time.perf_counter()
        side = side if side is not None else torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warm_up_runs):  # initialises lazy state (cuBLAS/cuDNN handles, plans) outside the capture
                step()
        torch.cuda.current_stream().wait_stream(side)
        warmed_up = time.perf_counter()
        self.graph = torch.cuda.CUDAGraph()
        # A CUDA object freed during the capture (an old graph the garbage collector found) invalidates it: the
        # collector waits until after (a collection before each capture would cost ~0.1 s); other threads' CUDA
        # calls are theirs to check.
        gc.disable()
        try:
            with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
                self.output = step()
        finally:
            gc.enable()
        self.seconds = dict(warm_up=warmed_up - started, capture=time.perf_counter() - warmed_up)

    def replay(self) -> torch.Tensor:
        """Run the captured step on the buffers' current contents; the output is overwritten by the next replay."""
        self.graph.replay()
        return self.output


class DecodeGraphs:
    """Captured lazily per (batch, window); ``LlamaRuntime.warm_up`` captures them all at start.

    All of them share one memory pool: one step runs at a time and its output is copied out before the next replay,
    so the intermediates of 30 graphs (6 batch buckets x 5 windows) need the memory of the largest alone. Their
    warm-up runs share one side stream too: cuBLAS keeps a workspace (32 MiB on Hopper) for every stream it
    has run on, for good."""

    def __init__(self, make_step: StepFactory):
        self.make_step = make_step
        self.side = torch.cuda.Stream()
        self.clear()

    def clear(self) -> None:
        """Drop every graph (to capture again, e.g. with other kernel configs). The pool goes with them: once
        its last graph is gone PyTorch frees it, and capturing into its stale handle fails."""
        self.captured: dict[tuple[int, int], CapturedStep] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def get(self, batch: int, window: int) -> CapturedStep:
        key = (batch, window)
        if key not in self.captured:
            self.captured[key] = CapturedStep(self.make_step(batch, window), self.pool, self.side)
        return self.captured[key]
