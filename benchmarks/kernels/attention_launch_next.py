"""The captured one-row 13B decode step with decode attention's two kernels letting the next kernel launch right
after their wait (shipped) or only as their programs finish, at several conversation lengths.

    python -m benchmarks.kernels.attention_launch_next [--positions 100 600 1800] [--rounds 3]   # Hopper or later

Under overlapping launches (``worker.kernels.launch``) a kernel's programs are placed on the SMs as soon as every
program of the kernel before has passed its wait, and sit there until it completes: the combine kernel's beside
the chunk programs, o's int4 matmul beside the combine's. Whether those waiting programs cost the running ones
SM room hangs on how many chunk programs the attention window makes (NOTES row 100: o's config won or lost by
conversation length). Each variant alternately, at each position, greedy tokens compared (``step_variants``).
"""

from __future__ import annotations

import argparse

from benchmarks.kernels.step_variants import each_batch, require_overlapping_launches
from benchmarks.result_json import write_result
from worker.kernels import decode_attention

SHIPPED = dict(decode_attention.LAUNCH_NEXT_AFTER_WAIT)
VARIANTS = {"shipped": SHIPPED, "chunk at its end": {**SHIPPED, "chunk": False},
            "combine at its end": {**SHIPPED, "combine": False},
            "both at their end": {"chunk": False, "combine": False}}


def launching(setting: dict):
    return lambda: decode_attention.LAUNCH_NEXT_AFTER_WAIT.update(setting)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, nargs="+", default=[100, 600, 1800])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    require_overlapping_launches()
    try:
        report = each_batch([1], args.rounds, {name: launching(setting) for name, setting in VARIANTS.items()},
                            tuple(args.positions))
    finally:
        decode_attention.LAUNCH_NEXT_AFTER_WAIT.update(SHIPPED)
    write_result("attention_launch_next", report)


if __name__ == "__main__":
    main()
