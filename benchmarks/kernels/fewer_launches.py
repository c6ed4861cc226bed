"""The captured 13B decode step with and without the two kernels that do a neighbour's work, saving a launch per
layer each (a decode step is a chain of ~440 short kernels, each waiting for the one before):

- SiLU·mul in the one-row gate/up matmul's epilogue (``worker.kernels.w4a16.silu_mul_matmul``; one-row steps
  whose gate/up config has no K split), against the matmul and ``layer_kernels.silu_mul``;
- the rotary step and the K/V write in decode attention's chunk programs
  (``worker.kernels.decode_attention.rotary_decode_attention``; a cache in the model's dtype, qkv split at most
  ``layer_ops.ROTARY_MAX_SPLIT`` ways), against ``layer_kernels.rotary_into_cache`` then the attention.

    python -m benchmarks.kernels.fewer_launches [--batches 1 32] [--rounds 3]

Alternately, in one process (``step_variants``: greedy tokens compared to the first variant's).
"""

from __future__ import annotations

import argparse

from benchmarks.kernels.step_variants import each_batch
from benchmarks.result_json import write_result
from worker.kernels import decode_attention, w4a16

SHIPPED = w4a16.SILU_MUL_EPILOGUE, decode_attention.ROTARY_IN_CHUNKS


def fusions(silu: bool, rotary: bool):
    def apply():
        w4a16.SILU_MUL_EPILOGUE, decode_attention.ROTARY_IN_CHUNKS = silu, rotary
    return apply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants = {"both": fusions(True, True), "silu kernel": fusions(False, True),
                "rotary kernel": fusions(True, False), "neither": fusions(False, False)}
    try:
        report = each_batch(args.batches, args.rounds, variants)
    finally:
        w4a16.SILU_MUL_EPILOGUE, decode_attention.ROTARY_IN_CHUNKS = SHIPPED
    write_result("fewer_launches", report)


if __name__ == "__main__":
    main()
