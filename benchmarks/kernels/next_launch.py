"""The captured one-row 13B decode step with each kernel letting the next launch at different moments, at several
conversation lengths.

    python -m benchmarks.kernels.next_launch [--positions 100 600 1800] [--rounds 3]   # Hopper or later

Under overlapping launches (``worker.kernels.launch``) a kernel's programs are placed on the SMs as soon as every
program of the kernel before has let it launch, and wait there until that kernel completes. Letting it right after
the wait hides the most launch time; letting it only at the end keeps the waiting programs off SMs the running ones
still need. Decode attention's chunk kernel has its own setting (``CHUNK_NEXT_LAUNCH``), its program count growing
with the attention window. Each variant alternately, at each position, greedy tokens compared (``step_variants``).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.kernels.step_variants import each_batch
from benchmarks.result_json import write_result
from worker.kernels import decode_attention, launch

SHIPPED = launch.NEXT_LAUNCH, decode_attention.CHUNK_NEXT_LAUNCH
VARIANTS = {  # name: (launch.NEXT_LAUNCH, decode_attention.CHUNK_NEXT_LAUNCH)
    "shipped": SHIPPED,
    "every kernel after its wait": ("after wait", None),
    "chunk while SMs are free": ("after wait", "while SMs are free"),
    "every kernel while SMs are free": ("while SMs are free", None),
    "every kernel at its end": ("at end", None),
}


def setting(every: str, chunk: str | None):
    def apply():
        launch.NEXT_LAUNCH, decode_attention.CHUNK_NEXT_LAUNCH = every, chunk
    return apply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, nargs="+", default=[100, 600, 1800])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not launch.overlap(torch.device("cuda"), 1, 1).get("launch_pdl"):
        raise SystemExit("overlapping launches need Hopper or later and a Triton with griddepcontrol")
    try:
        report = each_batch([1], args.rounds, {name: setting(*pair) for name, pair in VARIANTS.items()},
                            tuple(args.positions))
    finally:
        launch.NEXT_LAUNCH, decode_attention.CHUNK_NEXT_LAUNCH = SHIPPED
    write_result("next_launch", report)


if __name__ == "__main__":
    main()
