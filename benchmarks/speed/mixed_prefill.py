"""Prefill mixed into decode steps, ON against OFF: what answers already decoding notice when questions arrive.

The engine alone (no Redis, no worker): ``--decoding`` conversations decode, then ``--arrivals`` new questions
arrive together. For each mode (``Engine(mix_prefill=...)``), each in a fresh process (OFF first) on the same
checkpoint, and for each arrival workload (long prompts, ``--arrival-prompt-tokens``; short ones,
``--short-prompt-tokens``, which OFF prefills as one grouped pass), it reports:

- ``longest_pause_ms``: the longest time between two tokens of an already-decoding answer while the arrivals
  were being prefilled (and ``steady_gap_ms``, the median gap before they came, for scale);
- ``decode_tok_s_during``: tokens/s of those answers together, from the arrival until the last arrival's first
  token;
- ``ttft_p50_ms`` / ``ttft_p95_ms``: the arrivals' time to first token;
- the workload's ``mixed_steps``, and the engine's ``longest_decode_pause_tokens`` so far (a max over the
  process: the short workload runs before the long one).

On CUDA the checkpoint is the synthetic 13B (``benchmarks.synthetic_checkpoint``, random int4 codes: speed is
real, text is not); ``--device cpu`` runs the tiny shape at a tiny scale, so the benchmark itself is exercised
anywhere. Answers ignore EOS (random weights would end them at random) and run to their token limits.

    python3 -m benchmarks.speed.mixed_prefill                 # 13B shape on the GPU, ~5 min on an H200 (3 trials)
    python3 -m benchmarks.speed.mixed_prefill --device cpu    # tiny, a minute or so on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.result_json import ROOT, write_result
from benchmarks.synthetic_checkpoint import SHAPES, write_synthetic_checkpoint
from worker.inference import engine as engine_module
from worker.inference.engine import AnswerStream, Engine
from worker.inference.generate import Generator
from worker.inference.prompt import VICUNA, Turn
from worker.inference.sampling import GenerationParams
from worker.model.loader import load_model

MODES = {"off": False, "on": True}  # OFF first: neither run warms anything for the other (own processes anyway)
ARRIVAL_NEW_TOKENS = 16  # the arrivals only need their first tokens; short answers end the run sooner
STEADY_TOKENS = 8  # tokens each decoding answer has before the arrivals come (a steady batch)

# Every delivered token's time, by stream: recorded in the engine's thread as it delivers (benchmark only).
TOKEN_TIMES: dict[int, list[float]] = {}
_deliver = AnswerStream._deliver


def _timed_deliver(self, piece: str, tokens: int) -> bool:
    TOKEN_TIMES.setdefault(id(self), []).append(time.monotonic())
    return _deliver(self, piece, tokens)


AnswerStream._deliver = _timed_deliver


def question(words: int, seed: int) -> list[Turn]:
    """A question of ``words`` words of the synthetic word-level tokenizer (a word a token)."""
    ids = torch.randint(3, 900, (words,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [Turn("user", " ".join(f"w{i}" for i in ids))]


def never_ending(generator: Generator) -> None:
    """Answers run to their token limits: random weights would otherwise stop at a random EOS."""
    start_answer = generator.start_answer

    def without_eos(*args, **kwargs):
        answer = start_answer(*args, **kwargs)
        answer.eos_ids = set()
        return answer

    generator.start_answer = without_eos


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the engine did not get there in time")
        time.sleep(0.002)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def pauses(times: list[float], start: float, end: float) -> tuple[float, int]:
    """(longest gap between consecutive tokens that overlaps [start, end], tokens delivered in (start, end])."""
    longest = 0.0
    for before, after in zip(times, times[1:]):
        if after > start and before < end:
            longest = max(longest, after - before)
    return longest, sum(1 for t in times if start < t <= end)


def workload(engine: Engine, args, prompt_words: int, seed: int) -> dict:
    """``args.decoding`` answers decoding, then ``args.arrivals`` questions of ``prompt_words`` words at once."""
    before = engine.stats
    long_answer = GenerationParams(temperature=0.0, max_new_tokens=args.context // 2)
    decoding = [engine.submit(question(args.decoding_prompt_tokens, seed + i), long_answer)
                for i in range(args.decoding)]
    wait_until(lambda: all(s.tokens >= STEADY_TOKENS for s in decoding), timeout=300)
    short_answer = GenerationParams(temperature=0.0, max_new_tokens=ARRIVAL_NEW_TOKENS)
    turns = [question(prompt_words, seed + 1000 + i) for i in range(args.arrivals)]
    arrived = time.monotonic()
    arrivals = [engine.submit(t, short_answer) for t in turns]
    wait_until(lambda: all(s.first_token_at is not None for s in arrivals), timeout=300)
    last_first_token = max(s.first_token_at for s in arrivals)
    wait_until(lambda: all(s.finished for s in arrivals), timeout=300)
    for stream in decoding:
        stream.cancel()
    wait_until(lambda: engine.stats.active == 0, timeout=300)
    gaps, tokens = zip(*(pauses(TOKEN_TIMES[id(s)], arrived, last_first_token) for s in decoding))
    steady = [b - a for s in decoding for a, b in zip(TOKEN_TIMES[id(s)], TOKEN_TIMES[id(s)][1:]) if b <= arrived]
    ttft = [s.first_token_at - s.submitted_at for s in arrivals]
    after = engine.stats
    return dict(
        arrival_prompt_tokens=statistics.median(s.prompt_tokens for s in arrivals),
        longest_pause_ms=max(gaps) * 1000, steady_gap_ms=statistics.median(steady) * 1000 if steady else None,
        decode_tok_s_during=sum(tokens) / (last_first_token - arrived),
        arrivals_prefilled_s=last_first_token - arrived,
        ttft_p50_ms=percentile(ttft, 0.5) * 1000, ttft_p95_ms=percentile(ttft, 0.95) * 1000,
        mixed_steps=after.mixed_steps - before.mixed_steps,
        longest_decode_pause_tokens_so_far=after.longest_decode_pause_tokens,  # the engine's: a max since it began
    )


def medians(trials: list[dict]) -> dict:
    """Each figure's median over the trials (one trial swung by up to ±50% on the H200: NOTES row 59), the
    trials themselves kept beside it."""
    def numeric(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    summary = {key: statistics.median(t[key] for t in trials) for key in trials[0]
               if all(numeric(t.get(key)) for t in trials)}
    return {**summary, "trials": trials}


def run_mode(args) -> dict:
    """One mode in this process: load, build the engine (graphs captured), run each workload."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loaded = load_model(args.checkpoint, device=device, dtype=dtype)
    generator = Generator(loaded, VICUNA, system_prompt="", max_context_tokens=args.context,
                          cuda_graphs=device.type == "cuda")
    never_ending(generator)
    started = time.perf_counter()
    engine = Engine(generator, max_batch=args.decoding + args.arrivals, mix_prefill=MODES[args.mode])
    report: dict = dict(mode=args.mode, engine_build_s=time.perf_counter() - started,
                        context_tokens=generator.context_tokens, max_batch=engine.max_batch)
    engine.start()
    try:
        workload(engine, args, 64, seed=0)  # warm-up: compiles what eager mixed steps and prefills use
        # short first: the pause stat in tokens is a max over the process
        for name, words, seed in (("short_prompts", args.short_prompt_tokens, 1),
                                  ("long_prompts", args.arrival_prompt_tokens, 2)):
            report[name] = medians([workload(engine, args, words, seed=seed + 10 * trial)
                                    for trial in range(args.repeats)])
    finally:
        engine.stop()
    return report


def line(mode: str, name: str, row: dict) -> str:
    return (f"mix {mode:3} {name:13}: medians of {len(row['trials'])}: longest pause {row['longest_pause_ms']:7.1f} ms "
            f"(steady gap {row.get('steady_gap_ms') or 0:5.1f} ms; {row['longest_decode_pause_tokens_so_far']} prefill "
            f"tokens at most so far), "
            f"decode {row['decode_tok_s_during']:7.1f} tok/s during arrivals, TTFT p50 {row['ttft_p50_ms']:7.1f} ms "
            f"p95 {row['ttft_p95_ms']:7.1f} ms, {row['mixed_steps']} mixed steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", help="a benchmarks.synthetic_checkpoint shape (default: xwin13b on CUDA, "
                                        "tiny on the CPU)")
    parser.add_argument("--decoding", type=int, help="answers decoding when the questions arrive (default 8; "
                                                     "CPU 2)")
    parser.add_argument("--arrivals", type=int, help="questions arriving together (default 32; CPU 4)")
    parser.add_argument("--arrival-prompt-tokens", type=int,
                        help="words of a long arrival, over a chunk (default 1500; CPU 600)")
    parser.add_argument("--short-prompt-tokens", type=int, help="words of a short arrival (default 120; CPU 30)")
    parser.add_argument("--decoding-prompt-tokens", type=int, default=100)
    parser.add_argument("--context", type=int, help="tokens a conversation may hold (default 2048; CPU 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="trials of each workload; medians are reported")
    parser.add_argument("--mixed-prefill-tokens", type=int,
                        help="prompt tokens a mixed step carries (default: the engine's MIXED_PREFILL_TOKENS)")
    parser.add_argument("--mode", choices=list(MODES), help="run one mode in this process (the parent's child)")
    parser.add_argument("--checkpoint", help="an existing checkpoint (default: write a synthetic one)")
    args = parser.parse_args()
    cpu = args.device == "cpu"
    defaults = dict(shape="tiny" if cpu else "xwin13b", decoding=2 if cpu else 8, arrivals=4 if cpu else 32,
                    arrival_prompt_tokens=600 if cpu else 1500, short_prompt_tokens=30 if cpu else 120,
                    context=1024 if cpu else 2048)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.mixed_prefill_tokens:
        engine_module.MIXED_PREFILL_TOKENS = args.mixed_prefill_tokens
    if args.mode:
        print(json.dumps(run_mode(args)), flush=True)
        return
    if not args.checkpoint:
        base = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        started = time.perf_counter()
        args.checkpoint = str(write_synthetic_checkpoint(base / "ckpt", SHAPES[args.shape]))
        print(f"wrote the synthetic {args.shape} checkpoint in {time.perf_counter() - started:.1f} s", flush=True)
    report: dict = dict(device=args.device, shape=args.shape, decoding=args.decoding, arrivals=args.arrivals,
                        mixed_prefill_tokens=engine_module.MIXED_PREFILL_TOKENS, modes={})
    passed = ["--device", args.device, "--checkpoint", args.checkpoint, "--decoding", str(args.decoding),
              "--arrivals", str(args.arrivals), "--arrival-prompt-tokens", str(args.arrival_prompt_tokens),
              "--short-prompt-tokens", str(args.short_prompt_tokens), "--decoding-prompt-tokens",
              str(args.decoding_prompt_tokens), "--context", str(args.context),
              "--mixed-prefill-tokens", str(engine_module.MIXED_PREFILL_TOKENS), "--repeats", str(args.repeats)]
    for mode in MODES:  # each in a fresh process: no memory, caches or compiled kernels of the other
        command = [sys.executable, "-u", "-m", "benchmarks.speed.mixed_prefill", *passed, "--mode", mode]
        child = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            report["modes"][mode] = f"failed: exit {child.returncode}"
            continue
        report["modes"][mode] = json.loads(child.stdout.strip().splitlines()[-1])
    for mode, result in report["modes"].items():
        if isinstance(result, dict):
            for name in ("short_prompts", "long_prompts"):
                print(line(mode, name, result[name]))
        else:
            print(f"mix {mode}: {result}")
    write_result("mixed_prefill", report)


if __name__ == "__main__":
    main()
