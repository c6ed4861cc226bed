"""The captured 13B decode step with SiLU·mul in the one-row gate/up matmul's epilogue (one kernel,
``worker.kernels.w4a16.silu_mul_matmul``) against the matmul and ``layer_kernels.silu_mul`` (two kernels):

    python -m benchmarks.kernels.silu_epilogue [--batches 1] [--rounds 3]

Alternately, in one process (``step_variants``: greedy tokens compared). Only one-row steps whose gate/up config
has no K split take the one-kernel form; other row counts run the same kernels either way.
"""

from __future__ import annotations

import argparse

from benchmarks.kernels.step_variants import each_value
from benchmarks.result_json import write_result
from worker.kernels import w4a16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    report = each_value(w4a16, "SILU_MUL_EPILOGUE", {"silu in the matmul": True, "silu kernel": False},
                        args.batches, args.rounds)
    write_result("silu_epilogue", report)


if __name__ == "__main__":
    main()
