"""What `xwinbot api` adds per request: enqueue → first SSE content byte, minus the engine's own time to first token.

Starts a worker (the demo model on CPU unless XWINBOT_MODEL/--device say otherwise) and the API in this process
on a private queue in the local Redis, then for each prompt: the engine's own TTFT (``Engine.submit`` directly,
same prompt, nothing else running) and the API's (the `openai` client, streaming, time from sending the request
to the first content chunk). ``--concurrency`` sends that many requests at once and reports their total
tokens/s (on a GPU: 32 streams of ``--max-tokens 128``).

    .venv/bin/python -m benchmarks.speed.api_overhead --requests 20
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import openai
from redis import Redis

from benchmarks.result_json import write_result
from bot.api.app import start_in_thread
from worker.inference.prompt import Turn
from worker.serve import WorkerProcess
from worker.settings import Settings

PROMPTS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?", "Say hello.",
           "What does HTTP 429 mean?", "Name a planet."]


def engine_ttft(engine, question: str, max_tokens: int) -> float:
    params = engine.generator.defaults.replace(max_new_tokens=max_tokens)
    stream = engine.submit([Turn("user", question)], params)
    for _ in stream:
        pass
    return stream.first_token_at - stream.submitted_at


def api_ttft(client: openai.OpenAI, question: str, max_tokens: int) -> float:
    return api_stream(client, question, max_tokens)[0]


def api_stream(client: openai.OpenAI, question: str, max_tokens: int) -> tuple[float, float, int]:
    """One streamed request: (seconds to the first content chunk, seconds to the end, completion tokens)."""
    start = time.perf_counter()
    first, tokens = None, 0
    with client.chat.completions.create(model="xwinbot", messages=[{"role": "user", "content": question}],
                                        max_tokens=max_tokens, stream=True,
                                        stream_options={"include_usage": True}) as stream:
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    if first is None:
        raise RuntimeError("no content streamed")
    return first, time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    queue_name = f"bench-api-{uuid.uuid4().hex[:8]}"
    settings = Settings(queue_name=queue_name, device=args.device, api_keys="bench:sk-bench", api_port=args.port,
                        temperature=0.0, per_user_jobs=max(args.concurrency, 1) * 2, max_batch=max(args.concurrency, 1),
                        update_interval_s=0.05, metrics_port=0)
    redis = Redis.from_url(settings.redis_url)
    worker = WorkerProcess(settings, redis)
    worker.start()
    stop_api = start_in_thread(settings, redis)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="sk-bench", max_retries=0)
    try:
        questions = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
        api_ttft(client, "warm up", args.max_tokens)
        engine = [engine_ttft(worker.engine, q, args.max_tokens) for q in questions]
        began = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            streams = list(pool.map(lambda q: api_stream(client, q, args.max_tokens), questions))
        wall = time.perf_counter() - began
    finally:
        stop_api()
        worker.stop()
        for key in redis.scan_iter(f"{queue_name}*"):
            redis.delete(key)
    api = [first for first, _, _ in streams]
    overhead = [a - e for a, e in zip(api, engine)]
    report = {"requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
              "device": args.device, "engine_ttft_median_s": statistics.median(engine),
              "api_ttft_median_s": statistics.median(api), "overhead_median_s": statistics.median(overhead),
              "overhead_p90_s": sorted(overhead)[int(0.9 * (len(overhead) - 1))],
              "api_ttft_p95_s": sorted(api)[int(0.95 * (len(api) - 1))],
              "completion_tokens": sum(tokens for _, _, tokens in streams), "wall_s": wall,
              "total_tok_s": sum(tokens for _, _, tokens in streams) / wall}
    for name, value in report.items():
        print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    write_result("api_overhead", report)


if __name__ == "__main__":
    main()
