"""Triton kernels (int4 matmuls, the small ops between them, decode attention) and their measured configs."""
