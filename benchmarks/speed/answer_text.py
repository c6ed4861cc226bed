"""What turning sampled tokens into answer text costs the engine's thread each decode step, on the CPU.

The engine's thread runs ``AnswerText.push`` for every row after every step (``worker.inference.engine``), under
the tokenizer lock, while the GPU waits for the next launch only if this takes longer than the step itself. Here
32 answers of 128 tokens each, as 32 users' rows, are pushed token by token with the synthetic 13B checkpoint's
word-level tokenizer (what the GPU benchmarks answer with) and with a tokenizer of Llama-2's shape (byte tokens,
"▁" spaces: Xwin's), and the time a 32-row step spends on it is printed, median over rounds.

    python -m benchmarks.speed.answer_text [--rounds 7] [--tree DIR]   # DIR: another checkout's worker code
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROWS, TOKENS = 32, 128
STOPS = ("</s>", "USER:")  # the Vicuna template's stop sequences (Xwin's)
WORDS = "The capital of France is Paris, and the quick brown fox jumps over the lazy dog: héllo wörld ✓ 日本."


def tokenizers() -> dict:
    from transformers import AutoTokenizer

    from benchmarks.synthetic_checkpoint import llama2_shape_tokenizer, write_tokenizer

    word_level = Path(tempfile.mkdtemp()) / "tokenizer"
    write_tokenizer(word_level, 32000)
    return {"word-level 32k": AutoTokenizer.from_pretrained(word_level),
            "Llama-2 shape": llama2_shape_tokenizer([WORDS] * 4)}


def step_us(tokenizer, rounds: int) -> list[float]:
    """Per round: the mean time one 32-row step spends pushing its tokens into the 32 answers."""
    from worker.inference.generate import AnswerText

    rng = random.Random(0)
    rows = [tokenizer.encode(" ".join(rng.sample(WORDS.split(), 8) * 8), add_special_tokens=False)[:TOKENS]
            for _ in range(ROWS)] if tokenizer.vocab_size < 1000 else \
        [[rng.randrange(3, tokenizer.vocab_size) for _ in range(TOKENS)] for _ in range(ROWS)]
    steps = min(len(r) for r in rows)
    times = []
    for _ in range(rounds):
        answers = [AnswerText([1], TOKENS, tokenizer, STOPS, {2}) for _ in rows]
        started = time.perf_counter()
        for position in range(steps):
            for answer, row in zip(answers, rows):
                answer.push(row[position])
        times.append((time.perf_counter() - started) / steps * 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tree", help="import worker.* from this checkout (the tree before a change)")
    args = parser.parse_args()
    built = tokenizers()
    if args.tree:  # the tokenizers' builders imported this tree's worker: forget it, import the other's
        sys.path.insert(0, args.tree)
        for name in [name for name in sys.modules if name == "worker" or name.startswith("worker.")]:
            del sys.modules[name]
    import worker

    print(f"worker code from {Path(worker.__file__).parent.parent}: {ROWS} rows, {TOKENS} tokens each")
    for name, tokenizer in built.items():
        times = step_us(tokenizer, args.rounds)
        print(f"{name}: {statistics.median(times):.0f} us a {ROWS}-row step (median of {args.rounds} rounds; "
              f"fastest {min(times):.0f})")


if __name__ == "__main__":
    main()
