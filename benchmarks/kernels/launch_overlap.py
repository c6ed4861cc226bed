"""The captured 13B decode step with overlapping launches (``worker.kernels.launch``) and with plain ones.

    python -m benchmarks.kernels.launch_overlap [--batches 1 8 32] [--rounds 3]   # Hopper or later

For each batch the step is captured with plain launches, then with overlapping ones, alternately, and both must
decode the same greedy tokens (``step_variants``: a launch that read before the kernel before had written would
change them).
"""

from __future__ import annotations

import argparse

from benchmarks.kernels.step_variants import each_value, require_overlapping_launches
from benchmarks.result_json import write_result
from worker.kernels import launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    require_overlapping_launches()
    report = each_value(launch, "OVERLAP", {"plain": False, "overlapping": True}, args.batches, args.rounds)
    write_result("launch_overlap", report)


if __name__ == "__main__":
    main()
