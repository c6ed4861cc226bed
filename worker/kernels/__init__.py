"""Triton kernels (int4 matmuls, the small ops between them, decode attention) and their measured configs, and
how the KV cache stores its entries (``kv_quant``), which the cache and its kernels share."""

import os

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"  # the CPU tests: no inline assembly there
MAGIC = 0x4B000000  # the bits of 2.0**23: a small whole number n OR-ed into its mantissa reads as 2**23 + n
FP8_MAX = 448.0  # float8_e4m3fn's largest finite value: the fp8 K/V cache and the fp8 prefill scale to it
