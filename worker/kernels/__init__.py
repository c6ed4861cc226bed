"""Triton kernels (int4 matmuls, the small ops between them, decode attention) and their measured configs."""

import os

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"  # the CPU tests: no inline assembly there
