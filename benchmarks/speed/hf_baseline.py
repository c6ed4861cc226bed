"""The baseline every speed figure is compared with: plain transformers ``generate`` (eager, batch 1, greedy) on
the same int4 checkpoint and prompt, in a process of its own.

It runs in a fresh child process so that nothing of ours is alive beside it: measured inside another benchmark's
process it depended on what ran there before (9.3 tok/s inside the queue benchmark beside the worker's threads,
28.5 inside the batch-1 benchmark, same card); benchmarks/NOTES.md row 53 has the clean-process figure.

    python -m benchmarks.speed.hf_baseline --model DIR --prompt-ids FILE [--new-tokens 128] [--repeats 3]
    measure_in_clean_process(model_dir, prompt_ids, new_tokens)   # from another benchmark: the same, as a dict
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULT_MARK = "hf_baseline_result "  # the child's one result line starts with this


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def hf_generate(model, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s after it) of one greedy ``generate`` call."""
    import torch

    ids = torch.tensor([prompt], device=model.device)
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        sync()
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        sync()
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        sync()
        total = time.perf_counter() - start
    return ttft, (new_tokens - 1) / (total - ttft)


def measure(model_dir: str, prompt: list[int], new_tokens: int, repeats: int) -> dict:
    """Load the checkpoint, warm up, and time ``repeats`` greedy answers: medians, and the total rate of one
    question after another (what any number of users gets together without an engine)."""
    from worker.model.loader import load_model

    loaded = load_model(model_dir)
    hf_generate(loaded.model, prompt[:32], 8)  # warm-up: kernels compiled, allocator primed
    runs = [hf_generate(loaded.model, prompt, new_tokens) for _ in range(repeats)]
    ttft, decode = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    return dict(ttft_ms=ttft * 1000, decode_tok_s=decode,
                total_tok_s_any_user_count=new_tokens / (ttft + (new_tokens - 1) / decode),
                prompt_tokens=len(prompt), new_tokens=new_tokens, repeats=repeats, clean_process=True)


def measure_in_clean_process(model_dir: str, prompt: list[int], new_tokens: int, repeats: int = 3,
                             timeout_s: float = 900) -> dict:
    """``measure`` in a fresh ``python -m benchmarks.speed.hf_baseline`` child; its failure is reported, not raised."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as ids:
        json.dump(prompt, ids)
    command = [sys.executable, "-u", "-m", "benchmarks.speed.hf_baseline", "--model", model_dir, "--prompt-ids",
               ids.name, "--new-tokens", str(new_tokens), "--repeats", str(repeats)]
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                               cwd=Path(__file__).resolve().parents[2])
    except subprocess.TimeoutExpired:
        return {"failed": f"no result within {timeout_s:.0f} s"}
    finally:
        Path(ids.name).unlink(missing_ok=True)
    for line in child.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    return {"failed": f"exit {child.returncode}: {child.stderr.strip().splitlines()[-1:] or ['no output']}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--prompt-ids", required=True, help="JSON file: the prompt's token ids")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prompt = json.loads(Path(args.prompt_ids).read_text())
    print(RESULT_MARK + json.dumps(measure(args.model, prompt, args.new_tokens, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
