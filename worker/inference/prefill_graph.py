"""Whole prompts prefilled as CUDA graphs: one graph per (prompts bucket, length bucket).

An eager prefill pass makes a few thousand PyTorch and Triton calls (the 13B's 40 layers): host work that,
quiet, takes longer than the GPU's for a pass of up to 8 prompts of 64 tokens or one of 500, and that in the
worker is a GIL round trip per call while the job threads run Python: in a 32-user burst a one-prompt pass took
1.3-13 times its quiet time (benchmarks/NOTES.md row 73). A captured pass is one replay: one 500-token prompt
57 -> 36 ms, one of 64 tokens 43 -> 14 ms (row 74). Passes of more rows are bound by the GPU, where a replay
runs as fast as the eager pass once it attends to the prompts' own keys (``AttentionPart.whole_prompts``; row 75)
and still saves the burst its GIL waits: 8 x 500 tokens 206 -> 176 ms in a 32-user burst. Passes past
PREFILL_GRAPH_ROWS run eagerly. The shapes up to START_ROWS are captured at warm-up (``LlamaRuntime.warm_up``),
the larger ones while the engine is idle (``Engine``), none while someone waits: a pass whose graph is not
captured yet runs eagerly.

Prompts are padded to a count bucket too: the decode steps' batch buckets (1, 2, 4, 8, ...) and, between each
two, one half as large again (3, 6, 12, 24): padded to a power of two, a pass of 5 prompts ran 60% more rows than
it held, and a 6-prompt pass took as long as an 8-prompt one (benchmarks/NOTES.md row 87); 1.5x apart, a pass
holds at least two thirds of its rows. The in-between counts are captured while idle only, and until then a pass
takes the next power of two's graph.

A graph reads static inputs: the prompts' tokens padded to the length bucket, the index of each prompt's last
token and its cache slot (-1 for the padding prompts of a bucket: they write nothing). Prompts start at position
0 (whole prompts; a prompt's later chunks run eagerly). The graph's output is the logits after each prompt's
last token; sampling runs after the replay, with the slots' settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from worker.inference.decode_graph import CapturedStep

log = logging.getLogger(__name__)

PREFILL_GRAPH_ROWS = 4096  # padded rows (prompts x length bucket) a captured pass holds at most: 8 x 512 tokens
# Shapes of up to this many rows are captured at start: the host-bound passes, a lone prompt's among them. The
# larger ones are captured while the worker is idle, one at a time (until then such passes run eagerly).
START_ROWS = 1024
# Prompts are padded to a length bucket: a multiple of the step for lengths up to its limit (few graphs, each a
# capture of 0.1-0.5 s; a prompt past 512 tokens padded by under a quarter).
LENGTH_STEPS = ((512, 64), (1024, 128), (None, 256))  # (up to this length, step)
# Runs before each capture: one (the decode graphs' runs set up what the layers create lazily), not none: cuBLAS
# creates a handle for the capturing thread on its first call, which a capture cannot hold (NOTES row 75).
WARM_UP_RUNS = 1

# (prompts bucket, length bucket, the pass's inputs [prompts * length + 2 * prompts]) -> a pass on them
PassFactory = Callable[[int, int, torch.Tensor], Callable[[], torch.Tensor]]


def length_buckets(max_len: int) -> list[int]:
    """Every padded prompt length a pass is captured for, up to ``max_len``."""
    buckets, length = [], 0
    for limit, step in LENGTH_STEPS:
        while length + step <= min(limit or max_len, max_len):
            length += step
            buckets.append(length)
    return buckets


def prompt_buckets(batch_buckets: list[int]) -> list[int]:
    """The prompt counts a pass is captured for: ``batch_buckets`` and, between two of them, 1.5 times the
    smaller where that is a whole number between them (1, 2, 4, 8 -> 1, 2, 3, 4, 6, 8)."""
    between = [b * 3 // 2 for b, after in zip(batch_buckets, batch_buckets[1:]) if b % 2 == 0 and b * 3 // 2 < after]
    return sorted(set(batch_buckets) | set(between))


def all_shapes(buckets: list[int], max_len: int, max_rows: int = PREFILL_GRAPH_ROWS) -> list[tuple[int, int]]:
    """Every (prompts bucket, length bucket) a pass is captured for, fewest padded rows first."""
    shapes = [(batch, length) for batch in buckets for length in length_buckets(max_len) if batch * length <= max_rows]
    return sorted(shapes, key=lambda shape: (shape[0] * shape[1], shape))


def pass_shape(prompts: int, longest: int, buckets: list[int], max_len: int,
               max_rows: int = PREFILL_GRAPH_ROWS) -> tuple[int, int] | None:
    """(prompts bucket, length bucket) of a pass, or None where none is captured (more prompts than the largest
    bucket, more padded rows than ``max_rows``, or no length bucket within the cache's ``max_len``)."""
    batch = next((b for b in buckets if b >= prompts), None)
    length = next((n for n in length_buckets(max_len) if n >= longest), None)
    if batch is None or length is None or batch * length > max_rows:
        return None
    return batch, length


def pass_inputs(prompts: list[list[int]], first_slot: int, batch: int, length: int) -> torch.Tensor:
    """The host's copy of a pass's inputs for ``prompts`` in slots first_slot..: [batch * length] tokens (each
    prompt padded with 0 to ``length``, then padding prompts), [batch] last indices, [batch] slots (-1: none)."""
    padding = batch - len(prompts)
    tokens = [t for prompt in prompts for t in prompt + [0] * (length - len(prompt))] + [0] * (padding * length)
    last = [len(prompt) - 1 for prompt in prompts] + [0] * padding
    slots = list(range(first_slot, first_slot + len(prompts))) + [-1] * padding
    return torch.tensor(tokens + last + slots, dtype=torch.long)


class PrefillGraphs:
    """One graph per (prompts bucket, length bucket), all in one memory pool (one pass runs at a time and its
    logits are sampled before the next replay) and warmed up on one side stream, as ``DecodeGraphs``. The
    runtime replays only shapes already captured (``ready_shape``): up to START_ROWS at start
    (``capture_start``), the rest one by one while idle (``capture_next``)."""

    def __init__(self, make_pass: PassFactory, batch_buckets: list[int], max_len: int, device: torch.device,
                 side: torch.cuda.Stream):
        self.make_pass = make_pass
        self.start_buckets = batch_buckets  # the runtime's batch buckets: the prompt counts captured at start
        self.buckets = prompt_buckets(batch_buckets)  # every prompt count a pass is captured for
        self.max_len = max_len
        self.device = device
        self.side = side  # the decode graphs' side stream: cuBLAS keeps a workspace for every stream it ran on
        self.max_rows = PREFILL_GRAPH_ROWS  # read when built: a benchmark sets the module's before (queue_e2e)
        self.shapes = all_shapes(self.buckets, max_len, self.max_rows)  # every shape a pass may take, fewest rows first
        self.pool = torch.cuda.graph_pool_handle()
        self.idle_captures = True  # False after a capture failed
        self.captured: dict[tuple[int, int], tuple[CapturedStep, torch.Tensor]] = {}

    def shape_for(self, prompts: int, longest: int) -> tuple[int, int] | None:
        return pass_shape(prompts, longest, self.buckets, self.max_len, self.max_rows)

    def ready_shape(self, prompts: int, longest: int) -> tuple[int, int] | None:
        """``shape_for``'s shape where its graph is captured already, else that of the next batch bucket (an
        in-between count not captured yet), else None (the pass runs eagerly)."""
        for shape in (self.shape_for(prompts, longest),
                      pass_shape(prompts, longest, self.start_buckets, self.max_len, self.max_rows)):
            if shape in self.captured:
                return shape
        return None

    def missing(self) -> list[tuple[int, int]]:
        """The shapes not captured yet, fewest rows first."""
        return [shape for shape in self.shapes if shape not in self.captured]

    def capture_start(self) -> None:
        """Capture the shapes of up to START_ROWS rows whose prompt count is a batch bucket (27 with 32 slots and a
        2k cache, ~0.3 s each); the in-between counts wait for idle time, the start no longer for them."""
        for shape in self.missing():
            if shape[0] * shape[1] <= START_ROWS and shape[0] in self.start_buckets:
                self._graph(shape)

    def capture_next(self) -> bool:
        """Capture the smallest missing shape; False when none is left (or a capture failed: the rest then stay
        eager, which serves them as well, only slower)."""
        missing = self.missing() if self.idle_captures else []
        if not missing:
            return False
        try:
            self._graph(missing[0])
        except Exception:
            log.exception("capturing the prefill pass of %d x %d tokens failed; larger passes stay eager", *missing[0])
            self.idle_captures = False
            return False
        if len(missing) == 1:
            steps = [step.seconds for step, _ in self.captured.values()]
            log.info("all %d prefill passes captured (%.1f s in all)", len(steps),
                     sum(s["warm_up"] + s["capture"] for s in steps))
        return True

    def capture_all(self) -> None:
        """Capture every missing shape now (87 with 32 slots and a 2k cache)."""
        while self.capture_next():
            pass

    def run(self, shape: tuple[int, int], first_slot: int, prompts: list[list[int]],
            write: Callable[[torch.Tensor, torch.Tensor], None]) -> torch.Tensor:
        """Replay the pass of ``shape`` (``shape_for``) on ``prompts`` (slots first_slot..), its inputs copied in by
        ``write(destination, host)`` -> logits after each prompt's last token [len(prompts), V]."""
        graph, inputs = self._graph(shape)
        write(inputs, pass_inputs(prompts, first_slot, *shape))
        return graph.replay()[: len(prompts)]

    def _graph(self, shape: tuple[int, int]) -> tuple[CapturedStep, torch.Tensor]:
        if shape not in self.captured:
            batch, length = shape
            inputs = torch.zeros(batch * length + 2 * batch, dtype=torch.long, device=self.device)
            inputs[batch * length + batch :] = -1  # the capture's own runs write nothing into the cache
            step = CapturedStep(self.make_pass(batch, length, inputs), self.pool, self.side, WARM_UP_RUNS)
            self.captured[shape] = step, inputs
        return self.captured[shape]
