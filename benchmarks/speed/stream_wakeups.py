"""What readers of answer streams cost the engine's thread, on the CPU: no model, no GPU.

The engine's thread hands each decode step's tokens to every running answer (``AnswerStream._deliver``) and
needs Python's GIL to do it; each RQ job thread reads its answer and feeds a reply that edits the message at
most once a second. This runs the real ``AnswerStream`` and ``StreamingReply`` with N reader threads and a
producer that sleeps ``--step-ms`` per step (the GPU's time, GIL released) and then delivers one piece to
every stream, and prints the producer's time per step beyond the sleep: per-token reading (every piece wakes
its reader) against ``AnswerStream.batches`` (readers take what came at most every 0.25 s, as job threads do).

    python -m benchmarks.speed.stream_wakeups [--readers 32] [--steps 300] [--step-ms 15]
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from benchmarks.result_json import write_result
from worker.inference.engine import AnswerStream
from worker.posters.base import StreamingReply


class NullPoster:
    def update(self, job, text):
        pass

    def finish(self, job, text):
        pass


def read(stream: AnswerStream, batched: bool, interval: float) -> None:
    reply = StreamingReply(NullPoster(), None, interval)
    for piece in (stream.batches(interval) if batched else stream):
        reply.add(piece)
    reply.finish()


def run(readers: int, steps: int, step_s: float, batched: bool, interval: float = 0.25) -> float:
    """The producer's mean time per step beyond the simulated GPU time, in milliseconds."""
    streams = [AnswerStream() for _ in range(readers)]
    threads = [threading.Thread(target=read, args=(s, batched, interval)) for s in streams]
    for t in threads:
        t.start()
    extra = 0.0
    for step in range(steps):
        started = time.perf_counter()
        time.sleep(step_s)  # getting the GIL back after it counts too
        for stream in streams:
            stream._deliver(f" word{step}", step + 1)
        extra += time.perf_counter() - started - step_s
    for stream in streams:
        stream._end()
    for t in threads:
        t.join()
    return extra / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--step-ms", type=float, default=15.0)
    args = parser.parse_args()
    report = {}
    for batched in (False, True):
        name = "batches_every_0.25s" if batched else "every_piece"  # 0.25 s: what worker.tasks asks for
        report[name] = run(args.readers, args.steps, args.step_ms / 1000, batched)
        print(f"{name}: {report[name]:.3f} ms of the engine's thread per step ({args.readers} readers)", flush=True)
    print(json.dumps(report))
    write_result("stream_wakeups", dict(report, readers=args.readers, steps=args.steps, step_ms=args.step_ms))


if __name__ == "__main__":
    main()
