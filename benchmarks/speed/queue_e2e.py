"""End to end through Redis and the worker (engine + RQ job threads) with a no-op poster.

Reports, for 1, 8 and 32 concurrent users (500-token prompts, 128 new tokens): total generated tokens/s,
enqueue → picked-up time (queue overhead), enqueue → first token, and time in the poster; the same for 32 users
with 64-token prompts (the speed-anchor workload, ``--anchor-prompt-tokens``); GPU memory; a warm
restart's time to ready; and, in the same run, the eager transformers ``generate`` baseline for both prompt
lengths, each in a process of its own before the worker starts (``benchmarks.speed.hf_baseline``). The users ask
from a process of their own, as the chat adapters do (``--users-in-worker-process``: from threads of the worker's
process, as before 2026-12-05, sharing its GIL), and every prefill pass is timed (``prefill_pass_log``).
``--shape demo`` runs small on the CPU; ``--shape llama3-8b`` (Llama-3.1-8B: GQA, 128k vocabulary) or any
shape of ``benchmarks.synthetic_checkpoint.SHAPES`` writes that synthetic checkpoint instead of the 13B.

    python -m benchmarks.speed.queue_e2e --redis-server /path/to/redis-server          # 13B shape on the GPU
    python -m benchmarks.speed.queue_e2e --shape llama3-8b --concurrency 32 --no-hf-baseline --no-restart
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from redis import Redis

from benchmarks.result_json import ROOT, write_result
from benchmarks.speed.hf_baseline import measure_in_clean_process
from benchmarks.speed.prefill_pass_log import PrefillPassLog
from worker import serve
from worker.inference import engine as engine_module
from worker.inference import prefill_graph
from worker.queue.job import GenerationOverrides, Job, JobTurn, ReplyTarget, Requester
from worker.queue.job_queue import job_queue
from worker.serve import WorkerProcess
from worker.settings import KV_CACHE_DTYPES, PREFILL_DTYPES, Settings


class TimingPoster:
    """A no-op platform that records when each reply event happened."""

    events: dict[str, dict[str, float]] = {}
    lock = threading.Lock()
    posting_s = 0.0

    finished: dict[str, threading.Event] = {}
    redis: Redis | None = None  # set: each final answer also pushed to ``final_key`` for users in another process

    def _mark(self, job, kind):
        start = time.perf_counter()
        with self.lock:
            self.events.setdefault(job.job_id, {}).setdefault(kind, time.time())
            if kind == "final":
                self.finished.setdefault(job.job_id, threading.Event()).set()
            TimingPoster.posting_s += time.perf_counter() - start
        if kind == "final" and self.redis is not None:
            self.redis.rpush(final_key(job.job_id), 1)

    def waiting(self, job, position):
        self._mark(job, "started")

    def update(self, job, text):
        self._mark(job, "first_text")

    def finish(self, job, text):
        self._mark(job, "final")

    def fail(self, job, message):
        self._mark(job, "final")
        print("failed:", job.job_id, message, flush=True)


def final_key(job_id: str) -> str:
    return f"bench:final:{job_id}"


def prompt_text(shape: str, n_tokens: int, seed: int) -> str:
    if shape == "demo":
        return f"Question {seed}: write a long story about a dragon who learns to count. " * (n_tokens // 16)
    import random

    from benchmarks.synthetic_checkpoint import SHAPES

    rng = random.Random(seed)
    spec = SHAPES.get(shape, {})
    top, bos = spec.get("vocab_size", 32000), spec.get("bos_token_id", 1)
    if bos > 3:  # Llama-3's special tokens sit at the top of its vocabulary (from 128000): words stay below
        top = min(top, bos)
    return " ".join(f"w{rng.randrange(3, top)}" for _ in range(n_tokens))


def make_job(shape: str, prompt_tokens: int, new_tokens: int, user: int, tag: str) -> Job:
    return Job(job_id=f"bench-{tag}-{user}-{time.time_ns()}",
               turns=[JobTurn(role="user", text=prompt_text(shape, prompt_tokens, hash((tag, user)) % 100000))],
               requester=Requester(platform="console", user_id=f"u{user}"),
               reply_to=ReplyTarget(platform="console"),
               overrides=GenerationOverrides(max_new_tokens=new_tokens))


def wait_final(job: Job) -> None:
    """Block (without polling: the benchmark shares the worker's GIL) until the job's answer is final."""
    with TimingPoster.lock:
        done = TimingPoster.finished.setdefault(job.job_id, threading.Event())
    done.wait()


def ask(queue, args, concurrency: int, prompt_tokens: int, wait) -> list[tuple[int, str, float]]:
    """``concurrency`` users, each asking ``args.rounds`` questions one after the other (a closed loop); ``wait(job)``
    blocks until the job's answer is final -> (round, job id, enqueued at) of every question."""
    done: list[tuple[int, str, float]] = []
    lock = threading.Lock()

    def user(number: int) -> None:
        for round_ in range(args.rounds):
            job = make_job(args.shape, prompt_tokens, args.new_tokens, number,
                           f"c{concurrency}p{prompt_tokens}r{round_}")
            queue.enqueue(job)
            wait(job)
            with lock:
                done.append((round_, job.job_id, job.created_at))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


def _users_process(connection, args, model: str, port: int, concurrency: int, prompt_tokens: int) -> None:
    """The users' own process (as the chat adapters are): asks when told to, sends back what ``ask`` returns."""
    redis = Redis(port=port)
    queue = job_queue(worker_settings(args, model, port), redis)
    connection.send("ready")
    connection.recv()
    connection.send(ask(queue, args, concurrency, prompt_tokens, lambda job: redis.blpop([final_key(job.job_id)])))


def users_in_own_process(args, model: str, port: int, concurrency: int, prompt_tokens: int):
    """-> (``ask``'s list, wall seconds from the go to the last answer), the users in a process of their own."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding CUDA and job threads
    ours, theirs = context.Pipe()
    users = context.Process(target=_users_process, args=(theirs, args, model, port, concurrency, prompt_tokens))
    users.start()
    ours.recv()  # imported and connected: the clock starts at the go
    begin = time.time()
    ours.send("go")
    done = ours.recv()
    wall = time.time() - begin
    users.join()
    return done, wall


def run_users(queue, process, args, concurrency: int, prompt_tokens: int | None = None,
              pass_log: PrefillPassLog | None = None, model: str = "", port: int = 0) -> dict:
    """``concurrency`` users, each asking ``rounds`` questions one after the other (a closed loop), of
    ``prompt_tokens`` (default ``args.prompt_tokens``), from their own process (or the worker's)."""
    prompt_tokens = prompt_tokens or args.prompt_tokens
    TimingPoster.events.clear()
    TimingPoster.posting_s = 0.0
    if pass_log:
        pass_log.clear()
    before = process.engine.stats
    if args.users_in_worker_process:
        begin = time.time()
        done = ask(queue, args, concurrency, prompt_tokens, wait_final)
        wall = time.time() - begin
    else:
        done, wall = users_in_own_process(args, model, port, concurrency, prompt_tokens)
    after = process.engine.stats
    tokens = after.tokens_generated - before.tokens_generated
    prefill_s, decode_s = after.prefill_s - before.prefill_s, after.decode_s - before.decode_s
    steps = after.steps - before.steps

    def ttft(job_id: str, created_at: float) -> float:
        events = TimingPoster.events[job_id]
        return events.get("first_text", events["final"]) - created_at

    def streaming_tok_s(job_id: str) -> float:
        """The answer's speed as its reader sees it: tokens after the first over first text -> final."""
        events = TimingPoster.events[job_id]
        return (args.new_tokens - 1) / max(events["final"] - events.get("first_text", events["final"]), 1e-9)

    all_ttft = sorted(ttft(j, at) for _, j, at in done)
    later = sorted(ttft(j, at) for r, j, at in done if r > 0)  # asked while the other users' answers were decoding
    pickup = [TimingPoster.events[j]["started"] - at for _, j, at in done]
    row = dict(
        total_tok_s=tokens / wall, tokens=tokens, wall_s=wall, questions=len(done),
        # each answer's own decode speed through the queue (valid when every answer ran to new_tokens)
        decode_tok_s_per_answer_median=(statistics.median(streaming_tok_s(j) for _, j, _ in done)
                                        if tokens == len(done) * args.new_tokens else None),
        queue_pickup_ms_median=statistics.median(pickup) * 1000,
        ttft_ms_p50=percentile(all_ttft, 50) * 1000, ttft_ms_p95=percentile(all_ttft, 95) * 1000,
        posting_ms_per_job=TimingPoster.posting_s / len(done) * 1000,
        max_batch_seen=after.max_batch_seen,
        # where the wall time went: the model's prefills, its decode steps, and the rest (the engine's host work
        # between steps, waiting for work)
        prefill_s=prefill_s, decode_s=decode_s, decode_steps=steps,
        decode_ms_per_step=decode_s / max(steps, 1) * 1000, other_s=wall - prefill_s - decode_s,
    )
    row["prefill_groups"] = process.engine.stats.prefill_group_histogram  # prompts prefilled together -> times
    if pass_log:  # each pass's host enqueue time against its wall time, by shape
        row["prefill_passes"] = pass_log.summary()
    if later:
        row.update(ttft_ms_p50_later_rounds=percentile(later, 50) * 1000,
                   ttft_ms_p95_later_rounds=percentile(later, 95) * 1000)
    return row


def show(label: str, row: dict) -> None:
    print(f"{label}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})}", flush=True)


def percentile(sorted_values: list[float], pct: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * pct / 100))]


def start_redis(redis_server: str, port: int) -> subprocess.Popen:
    workdir = Path(tempfile.mkdtemp())
    proc = subprocess.Popen([redis_server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
                             "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
                            stdout=subprocess.DEVNULL)
    time.sleep(1)
    return proc


def wait_for_idle_captures(graphs, limit_s: float = 300.0) -> float:
    """Seconds until the idle engine has captured every prefill pass the start left (the rounds then time the
    steady state, not passes that happen to run eagerly because their graph is not captured yet)."""
    started = time.perf_counter()
    while graphs is not None and graphs.idle_captures and graphs.missing() and time.perf_counter() - started < limit_s:
        time.sleep(0.05)
    return time.perf_counter() - started


def worker_settings(args, model: str, port: int) -> Settings:
    return Settings(model=model, redis_url=f"redis://127.0.0.1:{port}/0", template="vicuna", system_prompt="",
                    max_batch=max(args.concurrency), max_context_tokens=args.context, temperature=0.0,
                    per_user_jobs=1000, queued_jobs=1000, metrics_port=0, mix_prefill=args.mix_prefill,
                    kv_cache_dtype=args.kv_cache_dtype, prefill_dtype=args.prefill_dtype)


def hf_baseline(model: str, args, prompt_tokens: int) -> dict:
    """The seed's way, in the same run: plain transformers ``generate`` (eager) on the same checkpoint and
    prompt length, one question at a time (what every user count gets in total without the engine), in a fresh
    process started before the worker (``benchmarks.speed.hf_baseline``)."""
    from transformers import AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(model)(prompt_text(args.shape, prompt_tokens, 1)).input_ids
    # the median of 3: a single answer carries the first calls' kernel compiles
    return measure_in_clean_process(model, prompt, args.new_tokens, repeats=3)


def baselines_before_worker(model: str, args) -> dict:
    """The eager baseline for the benchmark's prompt length (and the anchor's), each in a clean process, run before
    the worker starts so that nothing else holds the GPU or the CPU meanwhile."""
    found = {"hf_generate_eager": hf_baseline(model, args, args.prompt_tokens)}
    print("baseline, transformers generate (eager, batch 1, one question after another, own process):",
          json.dumps(found["hf_generate_eager"]), flush=True)
    if args.anchor_prompt_tokens:
        found[f"hf_generate_eager_prompt{args.anchor_prompt_tokens}"] = base = hf_baseline(
            model, args, args.anchor_prompt_tokens)
        print(f"baseline with {args.anchor_prompt_tokens}-token prompts:", json.dumps(base), flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from benchmarks.synthetic_checkpoint import SHAPES

    parser.add_argument("--shape", choices=["demo", *SHAPES], default="xwin13b")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3, help="questions each user asks, one after the other")
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--anchor-prompt-tokens", type=int, default=64,
                        help="also the most users with prompts this long: the speed-anchor workload (64-token prompts) "
                             "(64-token prompts, 128 new tokens), which the issues' throughput bars compare with; "
                             "0: skip")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--context", type=int, default=2048, help="KV cache tokens per conversation")
    parser.add_argument("--redis-server", default="redis-server")
    parser.add_argument("--model", help="an existing checkpoint directory (default: write a synthetic one)")
    parser.add_argument("--restart-only", action="store_true", help="only time a worker start (a warm restart)")
    parser.add_argument("--no-hf-baseline", action="store_true", help="skip the eager transformers baseline")
    parser.add_argument("--no-restart", action="store_true", help="skip timing a warm restart")
    parser.add_argument("--mixed-prefill-tokens", type=int,
                        help="prompt tokens a mixed step carries (default: the engine's MIXED_PREFILL_TOKENS)")
    parser.add_argument("--mix-prefill", action="store_true",
                        help="prefill inside decode steps (XWINBOT_MIX_PREFILL; off by default)")
    parser.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                        help="the KV cache's dtype (XWINBOT_KV_CACHE_DTYPE; auto: the model's)")
    parser.add_argument("--prefill-dtype", choices=PREFILL_DTYPES, default="auto",
                        help="the prompts' int4 matmuls (XWINBOT_PREFILL_DTYPE; auto: the model's dtype)")
    parser.add_argument("--users-in-worker-process", action="store_true",
                        help="ask from threads of the worker's process (sharing its GIL) instead of a process of "
                             "their own")
    parser.add_argument("--prefill-graph-rows", type=int, help="padded rows a captured prefill pass holds at most "
                        "(default: worker.inference.prefill_graph.PREFILL_GRAPH_ROWS); larger passes run eagerly")
    parser.add_argument("--spare-threads", type=int, help="job threads beyond max_batch (default: the worker's "
                        "SPARE_JOB_THREADS)")
    args = parser.parse_args()

    port = 6390
    redis_proc = start_redis(args.redis_server, port)
    redis = Redis(port=port)
    if args.model:
        model = args.model
    elif args.shape == "demo":
        from worker.model.demo_model import ensure_demo_model

        model = str(ensure_demo_model())
    else:
        from benchmarks.synthetic_checkpoint import write_synthetic_checkpoint

        model = str(write_synthetic_checkpoint(Path(tempfile.mkdtemp(dir="/dev/shm")) / "ckpt", SHAPES[args.shape]))
    settings = worker_settings(args, model, port)
    if args.spare_threads is not None:
        serve.SPARE_JOB_THREADS = args.spare_threads
    if args.mixed_prefill_tokens:
        engine_module.MIXED_PREFILL_TOKENS = args.mixed_prefill_tokens
    if args.prefill_graph_rows:
        prefill_graph.PREFILL_GRAPH_ROWS = args.prefill_graph_rows
    baselines = {} if args.restart_only or args.no_hf_baseline else baselines_before_worker(model, args)
    started = time.perf_counter()
    process = WorkerProcess(settings, redis, posters={"console": TimingPoster})
    process.start()
    TimingPoster.redis = redis
    pass_log = PrefillPassLog(process.engine.runtime)
    worker_start_s = time.perf_counter() - started
    idle_s = wait_for_idle_captures(process.engine.runtime.prefill_graphs)
    captured = process.engine.runtime.prefill_graphs
    captures = [step.seconds for step, _ in captured.captured.values()] if captured is not None else []
    report = {"shape": args.shape, "worker_start_s": worker_start_s, "prefill_captures": dict(
        shapes=len(captures), warm_up_s=sum(c["warm_up"] for c in captures),
        capture_s=sum(c["capture"] for c in captures), idle_after_start_s=idle_s),
        "settings": dict(
        max_batch=settings.max_batch, job_threads=settings.max_batch + serve.SPARE_JOB_THREADS,
        mixed_prefill_tokens=engine_module.MIXED_PREFILL_TOKENS if args.mix_prefill else 0,
        context=settings.max_context_tokens, kv_cache_dtype=settings.kv_cache_dtype,
        prefill_dtype=settings.prefill_dtype, prefill_graph_rows=prefill_graph.PREFILL_GRAPH_ROWS, rounds=args.rounds,
        prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, anchor_prompt_tokens=args.anchor_prompt_tokens,
        users="worker's process" if args.users_in_worker_process else "own process")}
    if args.restart_only:
        process.stop()
        redis_proc.kill()
        print(json.dumps({"worker_start_s": report["worker_start_s"]}))
        return
    try:
        import torch

        report["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        queue = job_queue(settings, redis)
        warm = make_job(args.shape, args.prompt_tokens, 8, 999, "warm-up")
        queue.enqueue(warm)
        wait_final(warm)
        for concurrency in args.concurrency:
            report[f"c{concurrency}"] = row = run_users(queue, process, args, concurrency, pass_log=pass_log,
                                                        model=model, port=port)
            show(f"concurrency {concurrency}", row)
        if args.anchor_prompt_tokens:
            most = max(args.concurrency)
            label = f"c{most}_prompt{args.anchor_prompt_tokens}"
            report[label] = row = run_users(queue, process, args, most, args.anchor_prompt_tokens, pass_log=pass_log,
                                            model=model, port=port)
            show(f"concurrency {most}, {args.anchor_prompt_tokens}-token prompts", row)
        if torch.cuda.is_available():
            report["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    finally:
        process.stop()
        redis_proc.kill()
    if args.no_hf_baseline:
        report["hf_generate_eager"] = "skipped (--no-hf-baseline)"
    report.update(baselines)
    if args.no_restart:
        report["warm_restart_s"] = "skipped (--no-restart)"
        write_result("queue_e2e", report)
        print(json.dumps(report, indent=1))
        return
    restart = subprocess.run([sys.executable, "-m", "benchmarks.speed.queue_e2e", "--restart-only", "--model", model,
                              "--shape", args.shape, "--context", str(args.context), "--redis-server",
                              args.redis_server, "--concurrency", *map(str, args.concurrency)],
                             capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in restart.stdout.splitlines() if line.startswith("{")]
    report["warm_restart_s"] = json.loads(lines[-1])["worker_start_s"] if lines else restart.stderr[-2000:]
    print("warm restart:", report["warm_restart_s"], flush=True)
    write_result("queue_e2e", report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
