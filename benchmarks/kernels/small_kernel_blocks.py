"""The captured 13B decode step with other column blocks for the small kernels between the matmuls: add+RMSNorm's
(``worker.kernels.layer_kernels.NORM_BLOCK``) and SiLU·mul's (``SILU_BLOCK``). At one row a block is a program:
smaller blocks spread a kernel over more SMs, each with less to do before the next kernel may start.

    python -m benchmarks.kernels.small_kernel_blocks [--batches 1 8] [--norm-blocks 128 512] [--silu-blocks 256 512]

The shipped blocks first, then each other block alone, alternately (``step_variants``: greedy tokens compared).
"""

from __future__ import annotations

import argparse

from benchmarks.kernels.step_variants import each_batch
from benchmarks.result_json import write_result
from worker.kernels import layer_kernels

SHIPPED = layer_kernels.NORM_BLOCK, layer_kernels.SILU_BLOCK


def blocks(norm: int, silu: int):
    def apply():
        layer_kernels.NORM_BLOCK, layer_kernels.SILU_BLOCK = norm, silu
    return apply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--norm-blocks", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--silu-blocks", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    norm, silu = SHIPPED
    variants = {f"shipped (norm {norm}, silu {silu})": blocks(norm, silu)}
    variants.update({f"norm {block}": blocks(block, silu) for block in args.norm_blocks})
    variants.update({f"silu {block}": blocks(norm, block) for block in args.silu_blocks})
    try:
        report = each_batch(args.batches, args.rounds, variants)
    finally:
        layer_kernels.NORM_BLOCK, layer_kernels.SILU_BLOCK = SHIPPED
    write_result("small_kernel_blocks", report)


if __name__ == "__main__":
    main()
