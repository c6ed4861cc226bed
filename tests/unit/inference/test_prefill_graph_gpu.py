"""Captured prefill passes over a worker's life on the GPU: the start captures the small shapes, the idle engine the
rest, and until its graph is captured a pass runs eagerly with the same result. Skipped without a GPU."""

from __future__ import annotations

import time

import pytest
import torch

from worker.inference import llama_runtime, prefill_graph
from worker.inference.engine import Engine
from worker.inference.generate import Generator
from worker.inference.llama_runtime import LlamaRuntime
from worker.inference.prompt import VICUNA, Turn
from worker.inference.sampling import GenerationParams
from worker.model.loader import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="captured passes need a CUDA GPU")

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from tests.helpers.gptq_writer import write_gptq_checkpoint

    ckpt = write_gptq_checkpoint(tmp_path_factory.mktemp("prefill-graphs"), group_size=32, desc_act=True, sym=False)
    return load_model(ckpt.path, device="cuda", dtype=torch.bfloat16)


@pytest.fixture
def small_start(monkeypatch):
    """The start captures passes of up to 64 rows only, so a tiny model's cache leaves some for idle time."""
    monkeypatch.setattr(prefill_graph, "START_ROWS", 64)


def test_a_pass_runs_eagerly_until_its_graph_is_captured_then_replays_the_same_logits(loaded, small_start,
                                                                                      monkeypatch):
    sampled: list[torch.Tensor] = []

    def recording_greedy(logits, *settings):
        sampled.append(logits.float())
        return logits.argmax(dim=-1)

    monkeypatch.setattr(llama_runtime, "sample", recording_greedy)
    runtime = LlamaRuntime(loaded.model, 128, max_batch=4, cuda_graphs=True)
    runtime.warm_up()
    graphs = runtime.prefill_graphs
    everything = prefill_graph.all_shapes(prefill_graph.prompt_buckets([1, 2, 4]), 128)
    assert graphs.missing() == [shape for shape in everything if shape != (1, 64)]
    group = [[3 + (7 * i + p) % 200 for i in range(length)] for p, length in enumerate((40, 17, 33))]
    assert graphs.ready_shape(3, 40) is None
    with torch.inference_mode():
        eager = runtime.prefill_prompts(0, group)
        graphs._graph((4, 64))  # the power of two's graph serves three prompts until theirs is captured
        assert graphs.ready_shape(3, 40) == (4, 64)
        padded = runtime.prefill_prompts(0, group)
        while runtime.capture_idle():
            pass
        assert not graphs.missing() and graphs.ready_shape(3, 40) == (3, 64)
        replayed = runtime.prefill_prompts(0, group)
    want = sampled[-3]
    for got in sampled[-2:]:
        assert float((got - want).abs().max() / want.abs().max()) < 1e-2
    assert replayed == eager and padded == eager


def test_an_idle_engine_captures_what_its_start_left_and_answers_throughout(loaded, small_start):
    engine = Engine(Generator(loaded, VICUNA, system_prompt="", cuda_graphs=True), max_batch=4)
    graphs = engine.runtime.prefill_graphs
    left = len(graphs.missing())
    assert left > 0
    engine.start()
    try:
        during = engine.submit([Turn("user", "What is the capital of France?")], GREEDY)  # captures under way
        during_text = "".join(during)
        deadline = time.monotonic() + 120
        while graphs.missing() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not graphs.missing(), "the idle engine left passes uncaptured"
        after = [engine.submit([Turn("user", question)], GREEDY) for question in ("Hi there", "Name a colour")]
        after_texts = ["".join(stream) for stream in after]
    finally:
        engine.stop()
    for stream, text in zip([during, *after], [during_text, *after_texts]):
        assert stream.finished and stream.error is None and stream.tokens > 0 and text == stream.text
