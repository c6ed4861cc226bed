"""End to end through Redis and the worker (engine + RQ job threads) with a no-op poster.

Reports, for 1, 8 and 32 concurrent questions: total generated tokens/s, enqueue → picked-up time (queue
overhead), enqueue → first token, and time in the poster. ``--shape demo`` runs small on the CPU.

    python benchmarks/queue_e2e.py --redis-server /path/to/redis-server          # 13B shape on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis import Redis  # noqa: E402

from worker.job import GenerationOverrides, Job, JobTurn, ReplyTarget, Requester  # noqa: E402
from worker.queue import job_queue  # noqa: E402
from worker.serve import WorkerProcess  # noqa: E402
from worker.settings import Settings  # noqa: E402


class TimingPoster:
    """A no-op platform that records when each reply event happened."""

    events: dict[str, dict[str, float]] = {}
    lock = threading.Lock()
    posting_s = 0.0

    def _mark(self, job, kind):
        start = time.perf_counter()
        with self.lock:
            self.events.setdefault(job.job_id, {}).setdefault(kind, time.time())
            TimingPoster.posting_s += time.perf_counter() - start

    def waiting(self, job, position):
        self._mark(job, "started")

    def update(self, job, text):
        self._mark(job, "first_text")

    def finish(self, job, text):
        self._mark(job, "final")

    def fail(self, job, message):
        self._mark(job, "final")
        print("failed:", job.job_id, message, flush=True)


def prompt_text(shape: str, n_tokens: int, seed: int) -> str:
    if shape == "demo":
        return f"Question {seed}: write a long story about a dragon who learns to count. " * (n_tokens // 16)
    import random

    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(3, 32000)}" for _ in range(n_tokens))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=["xwin13b", "demo"], default="xwin13b")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--redis-server", default="redis-server")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp())
    port = 6390
    redis_proc = subprocess.Popen([args.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
                                   "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
                                  stdout=subprocess.DEVNULL)
    time.sleep(1)
    redis = Redis(port=port)
    if args.shape == "demo":
        from worker.demo_model import ensure_demo_model

        model = str(ensure_demo_model())
    else:
        from synthetic_checkpoint import write_synthetic_checkpoint

        model = str(write_synthetic_checkpoint(Path(tempfile.mkdtemp(dir="/dev/shm")) / "ckpt"))
    settings = Settings(model=model, redis_url=f"redis://127.0.0.1:{port}/0", template="vicuna", system_prompt="",
                        max_batch=max(args.concurrency), max_context_tokens=1024, temperature=0.0,
                        per_user_jobs=1000, queued_jobs=1000)
    started = time.perf_counter()
    process = WorkerProcess(settings, redis, posters={"console": TimingPoster})
    process.start()
    report = {"shape": args.shape, "worker_start_s": time.perf_counter() - started}
    try:
        import torch

        report["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        queue = job_queue(settings, redis)
        for concurrency in args.concurrency:
            TimingPoster.events.clear()
            TimingPoster.posting_s = 0.0
            tokens_before = process.engine.stats.tokens_generated
            jobs = [Job(job_id=f"bench-{concurrency}-{i}-{time.time_ns()}",
                        turns=[JobTurn(role="user", text=prompt_text(args.shape, args.prompt_tokens, i))],
                        requester=Requester(platform="console", user_id=f"u{i}"),
                        reply_to=ReplyTarget(platform="console"),
                        overrides=GenerationOverrides(max_new_tokens=args.new_tokens))
                    for i in range(concurrency)]
            begin = time.time()
            for job in jobs:
                queue.enqueue(job)
            while sum("final" in TimingPoster.events.get(j.job_id, {}) for j in jobs) < concurrency:
                time.sleep(0.01)
            wall = time.time() - begin
            tokens = process.engine.stats.tokens_generated - tokens_before
            events = [TimingPoster.events[j.job_id] for j in jobs]
            created = {j.job_id: j.created_at for j in jobs}
            pickup = [TimingPoster.events[j.job_id]["started"] - created[j.job_id] for j in jobs]
            ttft = sorted(e.get("first_text", e["final"]) - created[j.job_id] for j, e in zip(jobs, events))
            report[f"c{concurrency}"] = row = dict(
                total_tok_s=tokens / wall, tokens=tokens, wall_s=wall,
                queue_pickup_ms_median=statistics.median(pickup) * 1000,
                ttft_ms_p50=ttft[len(ttft) // 2] * 1000, ttft_ms_p95=ttft[int(len(ttft) * 0.95) - (len(ttft) == 1)] * 1000,
                posting_ms_per_job=TimingPoster.posting_s / concurrency * 1000,
                max_batch_seen=process.engine.stats.max_batch_seen,
            )
            print(f"concurrency {concurrency}: {json.dumps({k: round(v, 2) for k, v in row.items()})}", flush=True)
    finally:
        process.stop()
        redis_proc.kill()
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "queue_e2e.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
