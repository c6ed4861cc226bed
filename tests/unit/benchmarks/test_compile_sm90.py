"""The sm_90 compile check (``benchmarks/kernels/compile_sm90.py``) is run before spending device time; its table
of kernels must follow the kernels' own arguments, or the check fails on the CPU machine for no fault of the code."""

import pytest

from benchmarks.kernels.compile_sm90 import KERNELS, longest_loop


@pytest.mark.parametrize("kernel, signature, constexprs", [(k, s, c) for k, s, c, _, _ in KERNELS],
                         ids=[f"{k.fn.__name__}-{i}" for i, (k, *_) in enumerate(KERNELS)])
def test_every_kernel_argument_has_a_type_or_a_value(kernel, signature, constexprs):
    assert set(signature) | set(constexprs) == set(kernel.arg_names)


def test_the_fp8_prefill_kernels_are_in_the_table():
    names = {kernel.fn.__name__ for kernel, *_ in KERNELS}
    assert {"_dequantize_kernel", "_fp8_rows_kernel"} <= names


# The shape of Triton's SASS listing (``CompiledKernel.asm["sass"]``): control codes, a tab, the instruction;
# branch targets as labels on lines of their own; every kernel's code ends in a branch to itself.
LISTING = """--:-:-:-:5\t@P0 BRA LBB0;
--:-:-:-:1\tIMAD R0, R5, UR4, RZ;
LBB0:
--:-:-:-:1\tLDG.E R44, desc[UR6][R10.64];
LBB1:
--:-:-:-:1\tLOP3.LUT R9, R35, 0xf000f, R32, 0xea, !PT;
--:-:-:-:1\tHFMA2.BF16_V2 R9, R43, R17.H0_H0, R8;
--:-:-:-:6\t@P1 BRA LBB1;
--:-:-:-:6\t@P2 BRA LBB0;
--:-:-:-:1\tEXIT;
LBB5:
--:-:-:Y:0\tBRA LBB5;
"""


def test_the_longest_loop_runs_from_its_label_to_the_branch_back():
    assert longest_loop(LISTING) == 5  # LBB0's: the load, the inner loop's three, the branch back


def test_a_kernel_without_a_loop_counts_none():
    straight = "--:-:-:-:1\tIMAD R0, R5, UR4, RZ;\n--:-:-:-:1\tEXIT;\nLBB0:\n--:-:-:Y:0\tBRA LBB0;\n"
    assert longest_loop(straight) == 0
