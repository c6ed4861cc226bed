"""Turning a stream of token ids into clean text pieces: incremental detokenizing and stop sequences."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerBase


class IncrementalDecoder:
    """Decodes one token at a time, emitting text only once it is complete (no half UTF-8 characters).

    With a Rust tokenizer behind it (every "fast" one) the tokenizers library's own ``DecodeStream`` does it, one
    call a token: ~1.4 µs against ~11 for decoding the new window twice in Python (benchmarks/NOTES.md row 82),
    and the engine's thread does this for every row of every step. Otherwise, the same window arithmetic here."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.stream = DecodeStream(skip_special_tokens=False) if self.backend is not None else None
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token_id: int) -> str:
        if self.stream is not None:
            return self.stream.step(self.backend, token_id) or ""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        seen = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=False)
        full = decode(self.ids[self.prefix_offset :], skip_special_tokens=False)
        if len(full) <= len(seen) or full.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return full[len(seen) :]


class StopCutter:
    """Passes text through until a stop sequence appears, even when one arrives split across pieces.

    Text that could still become a stop sequence, and trailing whitespace, is held back until the next piece
    shows what it is; so an answer never ends in a turn marker or in blank lines.
    """

    def __init__(self, stop_sequences: Sequence[str]):
        self.stops = tuple(s for s in stop_sequences if s)
        self.prefix_ends = frozenset(c for s in self.stops for c in s[:-1])  # last characters of a stop's beginnings
        self.held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        buffer = self.held + text
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self.held = ""
            return buffer[: min(hits)].rstrip()
        ready = buffer[: len(buffer) - self._partial_stop_length(buffer)]
        ready = ready.rstrip()  # whitespace waits: it may turn out to precede a stop or the end
        self.held = buffer[len(ready) :]
        return ready

    def finish(self) -> str:
        """At the natural end of generation: what was held back, minus trailing whitespace."""
        text, self.held = self.held.rstrip(), ""
        return "" if self.stopped else text

    def _partial_stop_length(self, buffer: str) -> int:
        """Length of the longest end of ``buffer`` that begins some stop sequence."""
        if buffer[-1:] not in self.prefix_ends:  # most pieces: no stop can begin at their end (per token, per row)
            return 0
        best = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:length]):
                    best = length
                    break
        return best
