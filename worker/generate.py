"""The streaming generation API: a conversation in, text pieces out.

    generator = Generator(load_model(path), make_template("auto", tokenizer))
    for piece in generator.stream([Turn("user", "What is the capital of France?")]):
        print(piece, end="")
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from worker.llama_runtime import LlamaRuntime
from worker.loader import LoadedModel
from worker.prompt import FittedPrompt, PromptTemplate, Turn, fit_conversation
from worker.sampling import GenerationParams, SamplingTensors
from worker.stop_text import IncrementalDecoder, StopCutter


class Generator:
    def __init__(
        self,
        loaded: LoadedModel,
        template: PromptTemplate,
        *,
        system_prompt: str | None = None,
        max_context_tokens: int | None = None,
        defaults: GenerationParams = GenerationParams(),
        cuda_graphs: bool = False,
    ):
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.template = template
        self.system_prompt = system_prompt
        self.defaults = defaults
        self.context_tokens = min(max_context_tokens or loaded.max_positions, loaded.max_positions)
        self.runtime = LlamaRuntime(loaded.model, self.context_tokens, cuda_graphs=cuda_graphs)
        self.runtime.warm_up()

    def fit(self, turns: Sequence[Turn], params: GenerationParams) -> FittedPrompt:
        """The conversation as prompt tokens, oldest turns dropped to leave room for the answer."""
        budget = self.context_tokens - min(params.max_new_tokens, self.context_tokens // 2)
        return fit_conversation(self.template, self.tokenizer, turns, budget, self.system_prompt)

    def stream(self, turns: Sequence[Turn], params: GenerationParams | None = None) -> Iterator[str]:
        """Yield the answer in pieces; stop sequences are cut even when split across pieces."""
        params = params or self.defaults
        prompt = self.fit(turns, params)
        max_new = min(params.max_new_tokens, self.context_tokens - len(prompt.token_ids))
        sampling = SamplingTensors.of([params], self.runtime.device)
        decoder = IncrementalDecoder(self.tokenizer)
        cutter = StopCutter(self.template.stop_sequences)
        started = False
        for token_id in self.runtime.generate(prompt.token_ids, max_new, sampling, self.loaded.eos_token_ids):
            piece = cutter.push(decoder.push(token_id))
            if not started:
                piece = piece.lstrip()
                started = bool(piece)
            if piece:
                yield piece
            if cutter.stopped:
                return
        tail = cutter.finish()
        if tail and not started:
            tail = tail.lstrip()
        if tail:
            yield tail

    def answer(self, turns: Sequence[Turn], params: GenerationParams | None = None) -> str:
        return "".join(self.stream(turns, params))
