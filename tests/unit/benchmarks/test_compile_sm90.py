"""The sm_90 compile check (``benchmarks/kernels/compile_sm90.py``) is run before spending device time; its table
of kernels must follow the kernels' own arguments, or the check fails on the CPU machine for no fault of the code."""

import pytest

from benchmarks.kernels.compile_sm90 import KERNELS


@pytest.mark.parametrize("kernel, signature, constexprs", [(k, s, c) for k, s, c, _, _ in KERNELS],
                         ids=[f"{k.fn.__name__}-{i}" for i, (k, *_) in enumerate(KERNELS)])
def test_every_kernel_argument_has_a_type_or_a_value(kernel, signature, constexprs):
    assert set(signature) | set(constexprs) == set(kernel.arg_names)


def test_the_fp8_prefill_kernels_are_in_the_table():
    names = {kernel.fn.__name__ for kernel, *_ in KERNELS}
    assert {"_dequantize_kernel", "_fp8_rows_kernel"} <= names
