"""The streaming generation API: a conversation in, text pieces out.

    generator = Generator(load_model(path), make_template("auto", tokenizer))
    for piece in generator.stream([Turn("user", "What is the capital of France?")]):
        print(piece, end="")

``Generator.stream`` answers one conversation at a time (batch 1). Serving many users at once goes through
``worker.inference.engine.Engine``, which batches them on one runtime; both turn tokens into text with ``AnswerText``.
Once an engine serves a generator, its thread owns the runtime: ask the engine, not ``Generator.stream``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

from transformers import PreTrainedTokenizerBase

from worker.inference.kv_budget import sized_context
from worker.inference.llama_runtime import LlamaRuntime
from worker.inference.prompt import FittedPrompt, PromptTemplate, Turn, fit_conversation
from worker.inference.sampling import DEFAULT_PARAMS, GenerationParams
from worker.inference.stop_text import IncrementalDecoder, StopCutter
from worker.kernels.kv_quant import cache_dtype
from worker.model.loader import LoadedModel

log = logging.getLogger(__name__)


class AnswerText:
    """One answer as it is generated: token ids in, clean text pieces out, and when it is done.

    The answer ends at an EOS id, at a stop sequence (cut even when split across pieces) or after
    ``max_new_tokens``; leading whitespace is dropped. Batch-1 streaming and the engine both use this.
    """

    def __init__(self, prompt_ids: list[int], max_new_tokens: int, tokenizer: PreTrainedTokenizerBase,
                 stop_sequences: Sequence[str], eos_ids: set[int]):
        self.prompt_ids = prompt_ids
        self.max_new_tokens = max_new_tokens
        self.eos_ids = eos_ids
        self.decoder = IncrementalDecoder(tokenizer)
        self.cutter = StopCutter(stop_sequences)
        self.tokens = 0  # answer tokens so far (EOS not counted)
        self.started = False  # some text has been shown
        self.done = False

    def push(self, token_id: int) -> str:
        """The text this new token adds ('' while held back); when it ends the answer, the closing text too."""
        if self.done:
            return ""
        if token_id in self.eos_ids:
            return self.finish()
        self.tokens += 1
        piece = self._shown(self.cutter.push(self.decoder.push(token_id)))
        if self.cutter.stopped:
            self.done = True
        elif self.tokens >= self.max_new_tokens:
            piece += self.finish()
        return piece

    def finish(self) -> str:
        """End the answer here (generation ran out): the text held back, minus trailing whitespace."""
        if self.done:
            return ""
        self.done = True
        return self._shown(self.cutter.finish())

    def _shown(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        return text


class Generator:
    def __init__(
        self,
        loaded: LoadedModel,
        template: PromptTemplate,
        *,
        system_prompt: str | None = None,
        max_context_tokens: int | None = None,
        defaults: GenerationParams = DEFAULT_PARAMS,
        cuda_graphs: bool = False,
        kv_cache_gb: float | None = None,
        kv_cache_dtype: str = "auto",
    ):
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.template = template
        self.system_prompt = system_prompt
        self.defaults = defaults
        self.requested_context = max_context_tokens or loaded.max_positions
        self.context_tokens = min(self.requested_context, loaded.max_positions)  # may shrink to fit the cache
        self.cuda_graphs = cuda_graphs
        self.kv_cache_gb = kv_cache_gb
        self.kv_dtype = cache_dtype(kv_cache_dtype, loaded.dtype)  # "auto": the model's own
        self._runtime: LlamaRuntime | None = None

    @property
    def runtime(self) -> LlamaRuntime:
        """The model's runtime; built (one slot, graphs captured) on first use unless an engine built it."""
        if self._runtime is None:
            self.build_runtime(max_batch=1)
        return self._runtime

    def build_runtime(self, max_batch: int) -> LlamaRuntime:
        """A runtime whose KV cache has ``max_batch`` slots, replacing (and freeing) any earlier one. Each slot
        holds the configured context or, when the memory budget is smaller, as much as fits (see kv_budget)."""
        self._runtime = None
        loaded = self.loaded
        wanted = min(self.requested_context, loaded.max_positions)
        self.context_tokens = sized_context(wanted, max_batch, loaded.config, self.kv_dtype, loaded.device,
                                            self.kv_cache_gb)
        runtime = LlamaRuntime(self.loaded.model, self.context_tokens, max_batch=max_batch,
                               cuda_graphs=self.cuda_graphs, kv_dtype=self.kv_dtype)
        started = time.perf_counter()
        runtime.warm_up()
        decode = len(runtime.graphs.captured) if runtime.graphs is not None else 0
        prefill = len(runtime.prefill_graphs.captured) if runtime.prefill_graphs is not None else 0
        log.info("runtime warmed up in %.1f s (CUDA graphs: %d decode steps, %d prefill passes)",
                 time.perf_counter() - started, decode, prefill)
        self._runtime = runtime
        return runtime

    def fit(self, turns: Sequence[Turn], params: GenerationParams, system_prompt: str | None = None) -> FittedPrompt:
        """The conversation as prompt tokens, oldest turns dropped to leave room for the answer. ``system_prompt``
        (a channel's persona) replaces the configured one."""
        budget = self.context_tokens - min(params.max_new_tokens, self.context_tokens // 2)
        system = self.system_prompt if system_prompt is None else system_prompt
        return fit_conversation(self.template, self.tokenizer, turns, budget, system)

    def start_answer(self, turns: Sequence[Turn], params: GenerationParams,
                     system_prompt: str | None = None) -> AnswerText:
        """Fit the prompt (PromptTooLong if the newest message alone does not fit) and set up its answer."""
        prompt = self.fit(turns, params, system_prompt)
        max_new = min(params.max_new_tokens, self.context_tokens - len(prompt.token_ids))
        return AnswerText(prompt.token_ids, max_new, self.tokenizer, self.template.stop_sequences,
                          self.loaded.eos_token_ids)

    def stream(self, turns: Sequence[Turn], params: GenerationParams | None = None) -> Iterator[str]:
        """Yield the answer in pieces; stop sequences are cut even when split across pieces."""
        params = params or self.defaults
        answer = self.start_answer(turns, params)
        for token_id in self.runtime.generate(answer.prompt_ids, answer.max_new_tokens, params):
            piece = answer.push(token_id)
            if piece:
                yield piece
            if answer.done:
                return
        tail = answer.finish()
        if tail:
            yield tail

    def answer(self, turns: Sequence[Turn], params: GenerationParams | None = None) -> str:
        return "".join(self.stream(turns, params))
