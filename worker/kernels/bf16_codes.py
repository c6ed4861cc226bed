"""PTX that turns 4-bit codes into bf16 without an int-to-float instruction, shared by the int4 kernels (Triton's
in ``w4a16`` and the Gluon one in ``w4a16_copy_warps``): the same values in fewer instructions than through fp32
(benchmarks/NOTES.md row 29)."""

from __future__ import annotations


def code_ptx(j: int, words: tuple[str, str], zero: str, out: str) -> list[str]:
    """PTX for code j of two words (registers) as bf16x2 ``code - zero`` in ``out``: the words' low (codes 0-3)
    or high (4-7) 16 bits side by side, shifted to code j, AND-ed out and OR-ed into bf16's 128 (0x4300): it
    reads as 128 + code; less ``zero`` (128 + zero as bf16x2) it is the exact small integer code - zero."""
    lines = [f"prmt.b32 t, {words[0]}, {words[1]}, {'0x5410' if j < 4 else '0x7632'};"]
    if j % 4:
        lines.append(f"shr.b32 t, t, {4 * (j % 4)};")
    return lines + ["lop3.b32 t, t, 0x000F000F, 0x43004300, 0xea;", f"sub.bf16x2 {out}, t, {zero};"]


# Two elements a time (``pack=2``): code j - zero of each, as bf16 ($1, $2 their words; $3 their 128 + zero).
CODE_MINUS_ZERO = tuple(" ".join(["{ .reg .b32 t;", *code_ptx(j, ("$1", "$2"), "$3", "$0"), "}"]) for j in range(8))
# One word of 8 codes for two elements a time ($2, $3 their words; $4 their 128 + zero; $5..$12 their x_0..x_7,
# all bf16x2): 8 fused multiply-adds in bf16x2 sum each word, whose halves come back as fp32 ($0, $1). ~2.1
# instructions a code against ~4.9 in fp32.
WORD_SUMS = " ".join(
    ["{ .reg .b32 t, c, acc;"]
    + [line for j in range(8) for line in code_ptx(j, ("$2", "$3"), "$4", "c")
       + [f"fma.rn.bf16x2 acc, c, ${5 + j}, acc;" if j else "mul.bf16x2 acc, c, $5;"]]
    + ["shl.b32 $0, acc, 16;", "and.b32 $1, acc, 0xffff0000; }"])
