"""One generation engine for everyone: continuous batching of many conversations on one model.

    engine = Engine(generator, max_batch=8)
    engine.start()
    stream = engine.submit([Turn("user", "Hi")])      # from any thread; PromptTooLong raised right here
    for piece in stream:                               # blocks for each piece; stream.cancel() stops it
        print(piece, end="")

One background thread owns the model. Each turn of its loop admits waiting requests into free cache slots
and prefills them, runs ONE decode step for every conversation that is decoding, delivers each one's text and
retires those that finished, failed or were cancelled. How the prompts get in depends on who is decoding:

- nobody: several whole prompts together in one forward (rows padded to the longest, at most ``PREFILL_TOKENS``
  in all, so a burst of questions shares one pass over the weights: the best time to first token when
  everyone arrives together), or the next ``PREFILL_CHUNK`` tokens of one long prompt;
- someone, with ``mix_prefill`` (``XWINBOT_MIX_PREFILL``, off by default): the decode step itself prefills the
  next ``MIXED_PREFILL_TOKENS`` prompt tokens (``LlamaRuntime.launch_mixed``: one forward, decoding rows and
  prompt segments sharing every matmul):
  the prompt a step cut goes on first, then waiting ones whole while they fit, the last one cut at the
  budget; a prompt longer than ``PREFILL_CHUNK`` goes in ``PREFILL_CHUNK`` tokens a step. A decoding answer
  never waits for more than one such step of someone else's prompts
  (``EngineStats.longest_decode_pause_tokens``), and a prompt whose last tokens ran joins decoding with the
  token that step sampled. A mixed step that fails to launch ends its prompts (as a failed prefill does) and
  the decoding rows take the next step alone. Off, a grouped prefill runs between two decode steps, decoding
  rows waiting for it.

A request that arrives while others decode joins at a later step; one that finishes frees its slot at once.
Decoding conversations always sit in the lowest slots (a finished one's slot is filled by moving the last one
down), so a step reads one slice of the cache and free slots cost nothing; prompts being prefilled sit just
above them, in the order they came (at most one part-way in: the highest), so each joins by moving down to
the slot above the decoding ones without touching another's. Text comes from the same ``AnswerText`` as
``Generator.stream``.

Decoding runs one step ahead: a step feeds its sampled tokens back as the next step's inputs on the device
(``LlamaRuntime.launch``), so step N+1 is launched before the host reads step N's tokens and turns them into
text, and the GPU does not wait for that host work. Step N+1 then also computed a token for the requests that
ended at N; those tokens are dropped. When the rows change (someone ended, was cancelled or joins), the step
in flight is read before the next launch. A mixed step is launched ahead like any step; one that ended
prompts is read at the start of the next turn, before anything else, so they join before the next launch.

An answer that ends frees its slot before its reader is woken, and readers are woken only once the next step
is launched (``_wake_ended``). A woken reader finishes its job in the same process (RQ's bookkeeping, the next
question's pickup): Python work that holds the GIL, which every PyTorch call of the engine's thread must take
back. Moving a slot while those readers ran took far longer than without them, the device idle
meanwhile (benchmarks/NOTES.md rows 39-41).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from worker.inference.generate import AnswerText, Generator
from worker.inference.llama_runtime import PREFILL_CHUNK, LaunchedStep, Segment
from worker.inference.prompt import Turn
from worker.inference.sampling import GenerationParams
from worker.settings import DEFAULT_MAX_BATCH, DEFAULT_MIX_PREFILL

PREFILL_TOKENS = 4096  # padded prompt tokens prefilled together in one turn (several short prompts at once)
# Prompt tokens one mixed step carries. Every forward over more than 64 rows rebuilds the bf16 weights from the
# int4 codes (worker.kernels.w4a16.dequantized_matmul), a fixed ~25 ms on the 13B: with 512-token steps that
# cost came back at every step and 32 users got 740 tok/s against 1,640 unmixed (benchmarks/NOTES.md row 59).
MIXED_PREFILL_TOKENS = 4096

log = logging.getLogger(__name__)


class EngineStopped(RuntimeError):
    """The engine stopped before this request finished."""


@dataclass(frozen=True)
class EngineStats:
    steps: int  # decode steps run (one launched ahead for requests that all ended meanwhile included)
    tokens_generated: int  # tokens delivered (prefills' first ones included, none for rows of ended requests)
    active: int  # requests holding a slot (decoding or being prefilled)
    waiting: int  # requests queued for a slot
    max_batch_seen: int  # most conversations decoded in one step
    batch_size_histogram: dict[int, int] = field(default_factory=dict)  # rows a step was launched with -> steps
    decoding: int = 0  # conversations in the current decode batch
    prefill_group_histogram: dict[int, int] = field(default_factory=dict)  # prompts prefilled together -> times
    prefill_s: float = 0.0  # seconds in the model's prefill calls (GPU work, waited for)
    decode_s: float = 0.0  # seconds launching decode (and mixed) steps and waiting for their tokens (host work
    # between excluded)
    mixed_steps: int = 0  # decode steps that also prefilled (part of) prompts, in one forward (``mix_prefill``)
    longest_decode_pause_tokens: int = 0  # most prefill tokens run between two tokens of one decoding answer


class AnswerStream:
    """One request's answer, produced by the engine's thread and read by another (the caller's)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._pieces: collections.deque[str] = collections.deque()
        self._reader_waiting = False  # a reader waits for the next piece (a resting one is not woken by pieces)
        self.text = ""  # everything delivered so far
        self.tokens = 0  # answer tokens generated so far
        self.prompt_tokens: int | None = None  # tokens of the prompt the answer follows (set by Engine.submit)
        self.cancelled = False
        self.finished = False  # no more text will come: answered, failed, or the cancel took effect
        self.error: BaseException | None = None
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None  # when the first answer token was sampled (for TTFT)
        self.last_token_at: float | None = None  # when the latest one was (for tokens/s)

    def __iter__(self) -> Iterator[str]:
        """Text pieces as they come; ends with the answer (or at once after ``cancel``); raises the error of
        a request that failed, after the pieces delivered before it."""
        while (piece := self._next_text(take_all=False)) is not None:
            yield piece

    def batches(self, interval: float) -> Iterator[str]:
        """Like iterating, but all the text delivered meanwhile comes as one piece, at most once per
        ``interval`` seconds (the first as soon as there is some): a reader that edits its message once a
        second is woken about once a second, not at every token, and the engine's thread does not wait for
        the GIL behind 32 readers at every step. The end, an error or ``cancel`` still wake it at once."""
        rest_until = 0.0
        while (text := self._next_text(take_all=True, rest_until=rest_until)) is not None:
            yield text
            rest_until = time.monotonic() + interval

    def _next_text(self, take_all: bool, rest_until: float = 0.0) -> str | None:
        """The next piece (or all pieces waiting), None at the end; rests until ``rest_until`` first, woken
        meanwhile only by the end or a cancel (pieces delivered then do not notify)."""
        with self._cond:
            while not (self.finished or self.cancelled) and (left := rest_until - time.monotonic()) > 0:
                self._cond.wait(left)
            self._reader_waiting = True
            while not (self._pieces or self.finished or self.cancelled):
                self._cond.wait()
            self._reader_waiting = False
            if self.cancelled:
                return None
            if not self._pieces:
                if self.error is not None:
                    raise self.error
                return None
            if not take_all:
                return self._pieces.popleft()
            text = "".join(self._pieces)
            self._pieces.clear()
            return text

    def cancel(self) -> None:
        """Stop this answer: iteration ends now, generation at the engine's next step."""
        with self._cond:
            if not self.finished:
                self.cancelled = True
            self._cond.notify_all()

    # Called by the engine's thread.
    def _deliver(self, piece: str, tokens: int) -> bool:
        """Record progress; False once the reader has cancelled (nothing more is recorded then)."""
        with self._cond:
            if self.cancelled:
                return False
            self.last_token_at = time.monotonic()
            if self.first_token_at is None:
                self.first_token_at = self.last_token_at
            self.tokens = tokens
            if piece:
                self.text += piece
                self._pieces.append(piece)
                if self._reader_waiting:
                    self._cond.notify_all()
            return True

    def _end(self, error: BaseException | None = None) -> None:
        with self._cond:
            if not self.finished:
                self.finished = True
                self.error = None if self.cancelled else error
            self._cond.notify_all()


@dataclass(eq=False)
class _Request:
    stream: AnswerStream
    answer: AnswerText
    params: GenerationParams  # its sampling settings, written into its slot's when it is admitted
    slot: int = -1
    prefilled: int = 0  # prompt tokens already in the cache
    over: bool = False  # the engine is done with it (its reader may not have been told yet)
    position: int = 0  # cache entries written, by a step launched and not yet read too: where the next step feeds
    prefill_mark: int = 0  # the engine's prefill tokens run when this one's latest token was launched


@dataclass(frozen=True)
class _Launched:
    """A decode step the device computes (or has computed) whose tokens the engine has not read yet."""

    step: LaunchedStep
    rows: list[_Request]  # the one in slot i when it was launched is rows[i]
    joining: tuple[tuple[int, _Request], ...] = ()  # (index in the tokens, request): prompts a mixed step ended


class Engine:
    def __init__(self, generator: Generator, max_batch: int = DEFAULT_MAX_BATCH,
                 mix_prefill: bool = DEFAULT_MIX_PREFILL):
        self.generator = generator
        self.max_batch = max_batch
        self.mix_prefill = mix_prefill  # prefill inside decode steps while others decode (XWINBOT_MIX_PREFILL)
        self.runtime = generator.build_runtime(max_batch)  # one cache of max_batch slots; graphs captured now
        self._cond = threading.Condition()  # guards the queue, the stopping flag and the stats
        self._tokenizer_lock = threading.Lock()  # fast tokenizers are not safe to share across threads
        self._waiting: collections.deque[_Request] = collections.deque()
        self._decoding: list[_Request] = []  # the one in slot i is _decoding[i] (engine thread only)
        self._prefilling: list[_Request] = []  # admitted, in the slots just above the decoding ones
        self._in_flight: _Launched | None = None  # the step launched ahead, not read yet (engine thread only)
        self._ended: list[_Request] = []  # answered and released, their readers not woken yet (engine thread only)
        self._stopping = False
        self._captures_left = True  # prefill passes left to capture while idle (engine thread only)
        self._thread: threading.Thread | None = None
        self._steps = self._tokens = self._max_batch_seen = 0
        self._prefill_s = self._decode_s = 0.0
        self._mixed_steps = self._longest_pause = 0
        self._prefill_tokens_run = 0  # prompt tokens (padding included) the model has been given so far
        self._decode_only_next = False  # a mixed step failed: the decoding rows step on their own once
        self._histogram: collections.Counter[int] = collections.Counter()
        self._prefill_groups: collections.Counter[int] = collections.Counter()

    # ----- the callers' side -------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._stopping:
                raise EngineStopped("engine stopped")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="xwinbot-engine", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """End the engine's thread after its current step; unfinished requests end with EngineStopped."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if thread is None:  # never started: nobody else will end the queued ones
            self._end_all(EngineStopped("engine stopped"))

    def submit(self, turns: Sequence[Turn], params: GenerationParams | None = None,
               system_prompt: str | None = None) -> AnswerStream:
        """Queue a conversation; raises PromptTooLong / ValueError here when it cannot be answered."""
        params = params or self.generator.defaults
        with self._tokenizer_lock:
            answer = self.generator.start_answer(turns, params, system_prompt)
        request = _Request(AnswerStream(), answer, params)
        request.stream.prompt_tokens = len(answer.prompt_ids)
        with self._cond:
            if self._stopping:
                raise EngineStopped("engine stopped")
            self._waiting.append(request)
            self._cond.notify_all()
        return request.stream

    @property
    def running(self) -> bool:
        """Its thread is serving (started, not stopped, not dead)."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(
                steps=self._steps, tokens_generated=self._tokens,
                active=len(self._decoding) + len(self._prefilling), waiting=len(self._waiting),
                max_batch_seen=self._max_batch_seen, batch_size_histogram=dict(self._histogram),
                decoding=len(self._decoding), prefill_group_histogram=dict(self._prefill_groups),
                prefill_s=self._prefill_s, decode_s=self._decode_s, mixed_steps=self._mixed_steps,
                longest_decode_pause_tokens=self._longest_pause,
            )

    # ----- the engine's thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        if self.runtime.device.type == "cuda":
            torch.cuda.set_device(self.runtime.device)
        with torch.inference_mode():
            while self._wait_for_work():
                try:
                    self._turn()
                except Exception as err:  # a fault of the engine itself: end what is running, keep serving
                    log.exception("generation step failed")
                    self._end_running(err)
        self._end_all(EngineStopped("engine stopped"))

    def _turn(self) -> None:
        """One turn: a mixed step while some decode and prompts wait (or one is part-way in); else today's
        grouped prefill (nobody decodes: a burst shares one big pass) then a decode step."""
        self._drop_cancelled()
        if self._in_flight is not None and self._in_flight.joining:
            self._read_in_flight()  # prompts it ended join the decoding rows before anything else
        if self._decode_only_next:
            self._decode_only_next = False
            self._decode_step()
        elif self._mixing():
            self._mixed_step()
        else:
            self._prefill_some()
            self._decode_step()
        self._wake_ended()

    def _mixing(self) -> bool:
        with self._cond:
            return self.mix_prefill and bool(self._decoding) and bool(self._prefilling or self._waiting)

    def _wait_for_work(self) -> bool:
        """Wait for work (True) or the stop (False). While idle, capture the prefill passes the start left, one at a
        time outside the lock: a question arriving meanwhile waits for one capture at most (~0.4 s)."""
        while True:
            with self._cond:
                if self._stopping:
                    return False
                if self._waiting or self._prefilling or self._decoding or self._in_flight:
                    return True
                if not self._captures_left:
                    self._cond.wait()
                    continue
            self._captures_left = self.runtime.capture_idle()

    def _admit_group(self) -> list[_Request]:
        """Waiting requests given the lowest free slots, prefilled together this turn: whole prompts of at
        most PREFILL_CHUNK tokens while the padded rows stay within PREFILL_TOKENS, or one longer prompt alone."""
        group: list[_Request] = []
        longest = 0
        with self._cond:
            while len(self._decoding) + len(group) < self.max_batch and (request := self._next_waiting()):
                length = len(request.answer.prompt_ids)
                if group and (length > PREFILL_CHUNK or (len(group) + 1) * max(longest, length) > PREFILL_TOKENS):
                    break
                self._waiting.popleft()
                request.slot = len(self._decoding) + len(group)
                group.append(request)
                longest = max(longest, length)
                if length > PREFILL_CHUNK:
                    break  # a long prompt prefills alone, a chunk per turn
            self._prefilling = group
        if group:  # in the slots just above the decoding ones, in order: one write for all their settings
            self.runtime.set_sampling(group[0].slot, [request.params for request in group])
        return group

    def _prefill_some(self) -> None:
        """Prefill this turn's prompts (or the next chunk of a long one); finished ones join decoding."""
        group = self._prefilling or self._admit_group()
        if not group:
            return
        self._read_in_flight()  # the prefill would wait for it on the device: count that wait as decoding
        started = time.perf_counter()
        try:
            tokens = self._prefill_group(group)
        except Exception as err:
            log.exception("prefill failed")
            with self._cond:
                self._prefilling = []
            for request in group:
                request.stream._end(err)
            return
        finally:
            self._prefill_s += time.perf_counter() - started
        if tokens is None:
            return  # the rest of a long prompt next turn, after a decode step for the others
        with self._cond:
            self._prefilling = []
            self._prefill_groups[len(group)] += 1
        self._join(zip(group, tokens))

    def _prefill_group(self, group: list[_Request]) -> list[int] | None:
        """The token after each prompt; None while a long prompt still has chunks to go. A prompt a mixed step
        began (``prefilled`` > 0) goes on from there, in chunks."""
        prompts = [r.answer.prompt_ids for r in group]
        if len(group) > 1 or (len(prompts[0]) <= PREFILL_CHUNK and not group[0].prefilled):
            self._prefill_tokens_run += len(group) * max(len(p) for p in prompts)  # rows padded to the longest
            return self.runtime.prefill_prompts(group[0].slot, prompts)
        request = group[0]
        chunk = prompts[0][request.prefilled : request.prefilled + PREFILL_CHUNK]
        self._prefill_tokens_run += len(chunk)
        token = self.runtime.prefill_chunk(request.slot, chunk, request.prefilled)
        request.prefilled += len(chunk)
        return [token] if request.prefilled == len(prompts[0]) else None

    def _join(self, prefilled: Iterable[tuple[_Request, int]]) -> None:
        """Prefilled requests, each with its first token, join the decoding ones in order; the next step's inputs
        of those that go on are written in one copy (they end up in consecutive slots: one that ends at its
        first token leaves the last slot, which the next one then takes)."""
        inputs = []
        for request, token in prefilled:
            if self._start_decoding(request, token):  # it may have moved: its slot is read after
                inputs.append((request.slot, token, request.position))
        if inputs:
            slots, tokens, positions = zip(*inputs)
            if list(slots) != list(range(slots[0], slots[0] + len(slots))):
                raise RuntimeError(f"joining requests in slots {slots}, not consecutive ones")
            self.runtime.set_inputs(slots[0], tokens, positions)

    def _start_decoding(self, request: _Request, token: int) -> bool:
        """A prefilled request joins the decoding ones (moved down next to them) with its first token; whether
        it goes on (its input for the next step is then the caller's to write), or ended at that token."""
        prompt_length = len(request.answer.prompt_ids)
        with self._cond:
            slot = len(self._decoding)
            if request.slot != slot:  # decoding ones left meanwhile: move down next to them
                self.runtime.move_slot(request.slot, slot, prompt_length)
                request.slot = slot
            self._decoding.append(request)
            self._tokens += 1
        request.position = prompt_length
        request.prefill_mark = self._prefill_tokens_run
        with self._tokenizer_lock:
            going_on = self._accept(request, token)
        if not going_on:
            self._release(request)
        return going_on

    def _decode_step(self) -> None:
        """Launch step N+1 for the decoding rows, then read step N: the device computes N+1 while the host
        turns N's tokens into text. N+1 starts from what N feeds back, so it is launched ahead only for the
        rows N ran; when they changed since (ended, cancelled, joined), N is read first and the rows as they
        are then launched after it. Nothing is launched while nobody decodes."""
        try:
            if self._in_flight is not None and self._in_flight.rows != self._decoding:
                self._read_in_flight()
            if not self._decoding:
                return
            launched = self._in_flight or self._launch()
            self._in_flight = self._launch()
            self._wake_ended()  # their readers run while the device computes
            self._finish(launched)
        except Exception as err:  # the batch as a whole failed: its requests end, the engine goes on
            log.exception("decode step failed for %d requests", len(self._decoding))
            self._end_running(err)

    def _launch(self) -> _Launched:
        """Enqueue a step for the decoding rows from the inputs on the device; each row's position moves on
        at once, so a slot move covers the entry this step writes."""
        rows = list(self._decoding)
        started = time.perf_counter()
        step = self.runtime.launch(len(rows), max(r.position for r in rows) + 1)
        self._decode_s += time.perf_counter() - started
        self._stepped(rows)
        return _Launched(step, rows)

    def _stepped(self, rows: list[_Request]) -> None:
        """Rows launched one token on: each one's position moves on at once (so a slot move covers the entry
        the step writes), and the prefill run since its previous token is its pause."""
        for request in rows:
            request.position += 1
            self._longest_pause = max(self._longest_pause, self._prefill_tokens_run - request.prefill_mark)
            request.prefill_mark = self._prefill_tokens_run

    def _mixed_step(self) -> None:
        """Launch one step for the decoding rows that also prefills the next MIXED_PREFILL_TOKENS prompt tokens, then
        read the step launched before it: the rows pause for at most one chunk, not for a whole group. The
        step is left in flight; one that ended prompts is read at the start of the next turn, when they join."""
        try:
            if self._in_flight is not None and self._in_flight.rows != self._decoding:
                self._read_in_flight()
            if not self._decoding:
                return  # they ended meanwhile: the next turn prefills the grouped way
            planned = self._next_segments()
            if not planned:  # no free slot: decode only
                self._decode_step()
                return
            try:
                launched = self._launch_mixed(planned)
            except Exception as err:  # like a failed prefill: its prompts end; the rows step alone next turn
                log.exception("mixed step failed for %d prompts", len(planned))
                self._end_prefilling([request for request, _ in planned], err)
                self._decode_only_next = True
                return
            previous, self._in_flight = self._in_flight, launched
            self._wake_ended()  # their readers run while the device computes
            if previous is not None:
                self._finish(previous)
        except Exception as err:  # the batch as a whole failed: its requests end, the engine goes on
            log.exception("mixed step failed for %d requests", len(self._decoding))
            self._end_running(err)

    def _next_segments(self) -> list[tuple[_Request, Segment]]:
        """This mixed step's prefill, at most MIXED_PREFILL_TOKENS tokens: the prompt an earlier step cut goes on
        first, then waiting prompts are admitted into the slots above, whole while they fit, the last one cut
        at the budget (so at most one prompt is ever part-way in, in the highest prefilling slot). A prompt
        longer than PREFILL_CHUNK goes in PREFILL_CHUNK tokens a step, as unmixed: the answers streaming
        meanwhile pause for one chunk of it, not for 4096 tokens (benchmarks/NOTES.md row 59)."""
        self._compact_prefilling()
        planned, budget = [], MIXED_PREFILL_TOKENS
        with self._cond:
            going_on = collections.deque(self._prefilling)
        while budget > 0 and (request := going_on.popleft() if going_on else self._admit_one()) is not None:
            rest = len(request.answer.prompt_ids) - request.prefilled
            take = min(budget, PREFILL_CHUNK if rest > PREFILL_CHUNK else rest)
            piece = request.answer.prompt_ids[request.prefilled : request.prefilled + take]
            planned.append((request, Segment(request.slot, request.prefilled, piece)))
            budget -= take
            if take < rest:
                break  # cut: it goes on next step, and nothing is admitted above a prompt part-way in
        return planned

    def _compact_prefilling(self) -> None:
        """Prompts part-way in move down next to the decoding rows (rows that ended left a gap), so every prompt
        admitted after them sits above them and joins after them: a prompt joining moves to the slot just
        above the decoding ones, which must not hold a prompt still being prefilled."""
        with self._cond:
            for index, request in enumerate(sorted(self._prefilling, key=lambda r: r.slot)):
                slot = len(self._decoding) + index
                if request.slot != slot:
                    self.runtime.move_slot(request.slot, slot, request.prefilled)
                    request.slot = slot

    def _next_waiting(self) -> _Request | None:
        """The first waiting request not cancelled, left in the queue (those cancelled before it end here);
        under ``_cond``."""
        while self._waiting and self._waiting[0].stream.cancelled:
            self._waiting.popleft().stream._end()
        return self._waiting[0] if self._waiting else None

    def _admit_one(self) -> _Request | None:
        """The next waiting request, given the slot above the decoding and prefilling ones; None when none
        waits or no slot is free."""
        with self._cond:
            if len(self._decoding) + len(self._prefilling) < self.max_batch and (request := self._next_waiting()):
                self._waiting.popleft()
                request.slot = len(self._decoding) + len(self._prefilling)
                self._prefilling.append(request)
                self.runtime.set_sampling(request.slot, [request.params])
                return request
        return None

    def _launch_mixed(self, planned: list[tuple[_Request, Segment]]) -> _Launched:
        """Enqueue the mixed step; a prompt whose last tokens it holds joins the rows when its token is read."""
        rows = list(self._decoding)
        segments = [segment for _, segment in planned]
        started = time.perf_counter()
        step = self.runtime.launch_mixed(len(rows), max(r.position for r in rows) + 1, segments)
        self._decode_s += time.perf_counter() - started
        self._prefill_tokens_run += sum(len(segment.token_ids) for segment in segments)
        self._stepped(rows)
        joining = []
        for index, (request, segment) in enumerate(planned):
            request.prefilled = segment.end
            if segment.end == len(request.answer.prompt_ids):
                joining.append((len(rows) + index, request))
        with self._cond:
            self._mixed_steps += 1
        return _Launched(step, rows, tuple(joining))

    def _end_prefilling(self, requests: list[_Request], error: BaseException) -> None:
        with self._cond:
            self._prefilling = [r for r in self._prefilling if r not in requests]
        for request in requests:
            request.stream._end(error)

    def _read_in_flight(self) -> None:
        """Read the step launched ahead, if any."""
        launched, self._in_flight = self._in_flight, None
        if launched is not None:
            self._finish(launched)

    def _finish(self, launched: _Launched) -> None:
        """Wait for a launched step's tokens and deliver each to its row's request, wherever that one sits now;
        a request that ended since the launch gets nothing (its row was wasted). Release those that end here."""
        started = time.perf_counter()
        tokens = self.runtime.read(launched.step)
        self._decode_s += time.perf_counter() - started
        delivered = [(r, token) for r, token in zip(launched.rows, tokens) if not (r.over or r.stream.finished)]
        with self._cond:
            self._steps += 1
            self._tokens += len(delivered)
            self._histogram[len(launched.rows)] += 1
            self._max_batch_seen = max(self._max_batch_seen, len(launched.rows))
        done = []
        with self._tokenizer_lock:
            for request, token in delivered:
                if not self._accept(request, token):
                    done.append(request)
        for request in done:
            self._release(request)
        joining = []
        for index, request in launched.joining:  # in slot order: each moves down to the next row's slot
            with self._cond:
                if request not in self._prefilling:  # cancelled meanwhile
                    continue
                self._prefilling.remove(request)
            joining.append((request, tokens[index]))
        self._join(joining)

    def _accept(self, request: _Request, token: int) -> bool:
        """Turn a sampled token into the request's text; False when the request is over: failed or cancelled
        (its stream ended here), or answered (its stream ended by ``_wake_ended``)."""
        try:
            piece = request.answer.push(token)
            delivered = request.stream._deliver(piece, request.answer.tokens)
        except Exception as err:  # this request's text failed: only it ends
            log.exception("answer text failed")
            request.stream._end(err)
            return False
        if not delivered:  # cancelled by its reader
            request.stream._end()
            return False
        if request.answer.done:
            request.over = True
            self._ended.append(request)  # told after its slot is free and the next step launched
            return False
        return True

    def _wake_ended(self) -> None:
        """End the streams of the answers that ended: their readers wake and post."""
        ended, self._ended = self._ended, []
        for request in ended:
            request.stream._end()

    def _release(self, request: _Request) -> None:
        """Free a decoding request's slot; the last decoding one moves into it, keeping slots 0..n-1 full."""
        with self._cond:
            last = self._decoding.pop()
            if last is not request:
                self.runtime.move_slot(last.slot, request.slot, last.position)
                last.slot = request.slot
                self._decoding[request.slot] = last

    def _drop_cancelled(self) -> None:
        with self._cond:
            for request in [r for r in self._waiting if r.stream.cancelled]:
                self._waiting.remove(request)
                request.stream._end()
            for request in [r for r in self._prefilling if r.stream.cancelled]:  # its slot is free again
                self._prefilling.remove(request)
                request.stream._end()
        for request in [r for r in self._decoding if r.stream.cancelled]:
            request.stream._end()
            self._release(request)

    def _end_running(self, error: BaseException) -> None:
        self._wake_ended()  # those were answered in full
        with self._cond:
            running = self._decoding + self._prefilling
            self._decoding, self._prefilling = [], []
        self._in_flight = None  # its tokens have nobody left to go to
        for request in running:
            request.stream._end(error)

    def _end_all(self, error: BaseException) -> None:
        self._end_running(error)
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for request in waiting:
            request.stream._end(error)
