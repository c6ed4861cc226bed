"""The captured 13B decode step with a one-row add+RMSNorm as two kernels and as one
(``worker.kernels.layer_kernels.ONE_PASS``), and the one kernel's column block per program.

    python -m benchmarks.kernels.one_pass_norm [--batches 1] [--blocks 256 512 1024] [--rounds 3]

The step is captured under each variant, alternately, and every variant must decode the two kernels' greedy
tokens (``step_variants``). Norms of more than one row keep two kernels, so only one row changes.
"""

from __future__ import annotations

import argparse

from benchmarks.kernels.step_variants import each_batch
from benchmarks.result_json import write_result
from worker.kernels import layer_kernels


def norm_form(one_pass: bool, block: int = layer_kernels.ONE_PASS_BLOCK):
    def apply():
        layer_kernels.ONE_PASS, layer_kernels.ONE_PASS_BLOCK = one_pass, block
    return apply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--blocks", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants = {"two kernels": norm_form(False)}
    variants.update({f"one kernel, {block} columns a program": norm_form(True, block) for block in args.blocks})
    shipped = layer_kernels.ONE_PASS, layer_kernels.ONE_PASS_BLOCK
    try:
        report = each_batch(args.batches, args.rounds, variants)
    finally:
        layer_kernels.ONE_PASS, layer_kernels.ONE_PASS_BLOCK = shipped
    write_result("one_pass_norm", report)


if __name__ == "__main__":
    main()
