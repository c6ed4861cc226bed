"""What do the numeric shortcuts (fp8 KV cache, bf16 arithmetic in the kernels) do to the answers?"""
