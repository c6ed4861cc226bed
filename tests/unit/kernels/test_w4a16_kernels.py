"""Our Triton w4a16 kernels compute x @ W.T for the GPTQ weight W exactly as the dequantized reference does.

On a machine without a GPU they run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so
these are the same kernel programs the GPU compiles. ``benchmarks/speed/gpu_inference.py`` repeats the checks on
the GPU in bf16 (the interpreter's bf16 ``tl.dot`` is not usable, so the batched CPU cases use fp16 / fp32).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from worker.kernels import w4a16 as w4a16_kernels  # noqa: E402
from worker.model.gptq_layout import act_order_g_idx, dequantize, quantize_weight  # noqa: E402
from worker.model.int4_fusion import build_int4_modules  # noqa: E402
from worker.model.tinygemm_linear import Int4Codes  # noqa: E402
from worker.model.triton_linear import TritonInt4Linear  # noqa: E402

CPU = torch.device("cpu")


def quantized_layer(out_features, in_features, group, act_order, sym, seed, dtype=torch.float16):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=gen)
    g_idx = act_order_g_idx(in_features, group, gen) if act_order else None
    tensors = quantize_weight(weight, 4, group, sym, g_idx)
    layer = TritonInt4Linear.from_codes(Int4Codes.from_gptq(tensors, group, 1, CPU), dtype)
    return tensors, layer


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm())


CASES = [  # group, act_order, sym, rows (1: the one-row kernel; 2..32 and groups of 128: the swapped dot; else
    # the unpacked dot; split-K on the narrow layers)
    (128, True, False, 1),
    (256, True, False, 1),
    (256, False, True, 16),
    (64, False, True, 1),
    (32, True, True, 3),
    (128, False, False, 16),
    (128, True, True, 20),
    (64, True, False, 33),
    (32, False, False, 64),
]


@pytest.mark.parametrize("group,act_order,sym,rows", CASES,
                         ids=[f"g{g}-{'act' if a else 'noact'}-{'sym' if s else 'asym'}-m{m}" for g, a, s, m in CASES])
def test_fused_kernel_matches_dequantized_reference(group, act_order, sym, rows):
    tensors, layer = quantized_layer(96, 256, group, act_order, sym, seed=group + rows)
    dtype = torch.bfloat16 if rows == 1 else torch.float16
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows)).to(dtype)

    out = layer(x)

    assert out.shape == (rows, 96) and out.dtype == dtype
    bound = 8e-3 if rows == 1 else 4e-3  # one row in bf16: each word's products summed in bf16 too
    assert relative_error(out, x.float() @ dequantize(tensors, 4).T) < bound


def test_narrow_layer_splits_k_and_still_sums_every_block():
    assert w4a16_kernels.fused_config(1, 64, 2048, 128, CPU)["split"] > 1  # 1 program of 128 outputs on a 4-"SM" CPU
    tensors, layer = quantized_layer(64, 2048, 128, True, False, seed=5, dtype=torch.float32)
    x = torch.randn(1, 2048, generator=torch.Generator().manual_seed(9))

    out = layer(x)

    assert relative_error(out, x @ dequantize(tensors, 4).T) < 1e-5


KERNEL_CONFIGS = {  # each kernel with K split 2 ways, its K blocks inside one group or (gemv) spanning four;
    # groups of 128: codes spread over 128 inputs; of 64: AutoGPTQ's order
    "gemv-blocks-span-groups": (1, 128, dict(kernel="gemv", BLOCK_M=1, BLOCK_N=64, BLOCK_K=512, split=2)),
    "gemv-block-in-a-group": (1, 64, dict(kernel="gemv", BLOCK_M=1, BLOCK_N=32, BLOCK_K=32, split=2)),
    "gemv-groups-of-64": (1, 64, dict(kernel="gemv", BLOCK_M=1, BLOCK_N=32, BLOCK_K=256, split=2)),
    "gemv-copied-ahead": (1, 128, dict(kernel="gemv", BLOCK_M=1, BLOCK_N=32, BLOCK_K=128, split=2, num_stages=3)),
    "swap": (5, 128, dict(kernel="swap", BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, split=2)),
    "swap-one-dot": (5, 128, dict(kernel="swap", BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, split=2, one_dot=True)),
    "unpacked": (5, 128, dict(kernel="unpacked", BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, split=2)),
    "unpacked-groups-of-64": (5, 64, dict(kernel="unpacked", BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, split=2)),
}


@pytest.mark.parametrize("name", KERNEL_CONFIGS)
def test_each_kernel_sums_every_block_of_every_split(name):
    rows, group, config = KERNEL_CONFIGS[name]
    tensors, layer = quantized_layer(128, 1024, group, True, False, seed=7, dtype=torch.float32)
    x = torch.randn(rows, 1024, generator=torch.Generator().manual_seed(8))

    partials = w4a16_kernels.matmul_partials(x[:, layer.perm], layer.packed, layer.scales, layer.zeros, group,
                                             {"num_warps": 4, "num_stages": 1, **config})

    assert partials.shape == (2, rows, 128)
    assert relative_error(partials.sum(0), x @ dequantize(tensors, 4).T) < 1e-5
    assert relative_error(w4a16_kernels.sum_splits(partials, torch.float32), x @ dequantize(tensors, 4).T) < 1e-5


@pytest.mark.parametrize("kernel,rows", [("gemv", 1), ("swap", 5), ("unpacked", 5)])
def test_a_split_that_does_not_divide_k_still_sums_every_block_once(kernel, rows):
    # 8 K blocks over 3 programs (2, 3 and 3 blocks) and over 5 (1 or 2): configs pick splits that fill the GPU
    tensors, layer = quantized_layer(128, 1024, 128, True, False, seed=7, dtype=torch.float32)
    x = torch.randn(rows, 1024, generator=torch.Generator().manual_seed(8))
    for split in (3, 5):
        config = dict(kernel=kernel, BLOCK_M=1 if rows == 1 else 16, BLOCK_N=64, BLOCK_K=128, split=split,
                      num_warps=4, num_stages=1)

        partials = w4a16_kernels.matmul_partials(x[:, layer.perm], layer.packed, layer.scales, layer.zeros, 128,
                                                 config)

        assert partials.shape == (split, rows, 128)
        assert all(float(part.abs().sum()) > 0 for part in partials)  # every program had blocks to add
        assert relative_error(partials.sum(0), x @ dequantize(tensors, 4).T) < 1e-5


def bf16_word_sums_reference(x: torch.Tensor, layer: TritonInt4Linear) -> torch.Tensor:
    """x [K] (bf16, group order) @ W.T the way the one-row kernel's bf16 path adds: per word of 8 inputs, each
    (code - zero) * x added to a bf16 sum with one rounding; the word sums times their scale added in fp32."""
    shifts = torch.arange(8, dtype=torch.int32) * 4
    codes = (layer.packed[:, None, :] >> shifts[None, :, None]) & 0xF  # [K/8, 8, N]: word w's code j
    group_words = layer.group_size // 8
    zeros = layer.zeros.float().repeat_interleave(group_words, 0)[:, None, :]  # per word row
    # the input each code multiplies
    x_of_codes = x[w4a16_kernels.code_position_inputs(layer.in_features, layer.group_size)]
    products = (codes.float() - zeros) * x_of_codes.float().view(-1, 8, 1)  # exact in fp32
    word_sums = torch.zeros(products[:, 0].shape, dtype=torch.bfloat16)
    for j in range(8):
        word_sums = (word_sums.float() + products[:, j]).bfloat16()
    word_scales = layer.scales.float().repeat_interleave(group_words, 0)  # [K/8, N]
    return (word_sums.double() * word_scales.double()).sum(0).float()


@pytest.mark.parametrize("block_k", [512, 128])
def test_one_row_bf16_path_adds_each_word_in_bf16_and_the_words_in_fp32(block_k):
    tensors, layer = quantized_layer(128, 1024, 128, False, False, seed=12, dtype=torch.bfloat16)
    x = torch.randn(1024, generator=torch.Generator().manual_seed(13)).bfloat16()
    config = dict(kernel="gemv", BLOCK_M=1, BLOCK_N=32, BLOCK_K=block_k, split=2, num_warps=4, num_stages=1)

    partials = w4a16_kernels.matmul_partials(x[None], layer.packed, layer.scales, layer.zeros, 128, config)
    exact = w4a16_kernels.matmul_partials(x[None], layer.packed, layer.scales, layer.zeros, 128,
                                          dict(config, bf16_words=False))

    assert partials.dtype == torch.float32  # split 2: fp32 partial sums
    assert relative_error(partials.sum(0)[0], bf16_word_sums_reference(x, layer)) < 1e-5
    exact_product = x.float() @ dequantize(tensors, 4).T
    assert relative_error(exact.sum(0)[0], exact_product) < 1e-5
    assert 1e-4 < relative_error(partials.sum(0)[0], exact_product) < 1e-2  # bf16 rounding, no more


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the bf16x2 assembly runs on a GPU only")
@pytest.mark.parametrize("block_n,stages", [(32, 1), (256, 1), (32, 3)])
def test_one_row_assembly_adds_as_the_bf16_path_says_on_the_gpu(block_n, stages):
    # The compiled one-row kernel (bf16x2 assembly: codes, zeros and word sums) at the 13B's K and its served
    # tiles (loaded as each block starts, or copied two blocks ahead), against the arithmetic written out on the CPU:
    # each column's own zero and scale, no more rounding.
    tensors, layer = quantized_layer(512, 5120, 128, True, False, seed=22, dtype=torch.bfloat16)
    assert (layer.zeros[:, 1:] != layer.zeros[:, :-1]).float().mean() > 0.5  # asymmetric: neighbours' zeros differ
    x = torch.randn(5120, generator=torch.Generator().manual_seed(23)).bfloat16()
    config = dict(kernel="gemv", BLOCK_M=1, BLOCK_N=block_n, BLOCK_K=256, split=2, num_warps=4, num_stages=stages)
    want = bf16_word_sums_reference(x, layer)
    layer = layer.cuda()

    partials = w4a16_kernels.matmul_partials(x[None].cuda(), layer.packed, layer.scales, layer.zeros, 128, config)

    assert relative_error(partials.sum(0)[0].cpu(), want) < 1e-5


ONE_ROW_NO_SPLIT = dict(kernel="gemv", BLOCK_M=1, BLOCK_N=32, BLOCK_K=256, split=1, num_warps=4, num_stages=1)


def gate_up_sums(x, layer, config):
    """(silu(gate) * up from the one-row kernel's epilogue, the same from the matmul's sums and the SiLU kernel)."""
    from worker.kernels import layer_kernels

    args = (x, layer.packed, layer.scales, layer.zeros, layer.group_size)
    return (w4a16_kernels.silu_mul_matmul(*args, config),
            layer_kernels.silu_mul(w4a16_kernels.matmul_partials(*args, config), x.dtype))


@pytest.mark.parametrize("group,block_n,width", [(128, 32, 80), (128, 64, 96), (64, 32, 96)],
                         ids=["tiles-of-16", "tiles-of-32", "groups-of-64"])
def test_one_row_gate_up_kernel_gives_the_silu_kernels_answer_bit_for_bit(group, block_n, width):
    # A fused gate/up layer: gate the first `width` outputs, up the next. A decode step takes the one-kernel
    # form wherever its config allows, the two-kernel form elsewhere: the answer must not depend on which.
    tensors, layer = quantized_layer(2 * width, 512, group, True, False, seed=16, dtype=torch.bfloat16)
    x = torch.randn(1, 512, generator=torch.Generator().manual_seed(17)).bfloat16()[:, layer.perm]
    config = dict(ONE_ROW_NO_SPLIT, BLOCK_N=block_n, BLOCK_K=2 * group)

    fused, two_kernels = gate_up_sums(x, layer, config)

    assert fused.shape == (1, width) and fused.dtype == torch.bfloat16
    assert torch.equal(fused, two_kernels)
    gate_up = x.float() @ dequantize(tensors, 4)[:, layer.perm].T
    want = torch.nn.functional.silu(gate_up[:, :width]) * gate_up[:, width:]
    assert relative_error(fused, want) < 2e-2  # bf16 word sums and roundings, no more


def test_gate_up_kernel_declines_what_it_cannot_serve_and_the_caller_falls_back(monkeypatch):
    tensors, layer = quantized_layer(192, 512, 128, True, False, seed=18, dtype=torch.bfloat16)
    x = torch.randn(2, 512, generator=torch.Generator().manual_seed(19)).bfloat16()
    args = (layer.packed, layer.scales, layer.zeros, 128)
    # the GPU's tuned table, as on an H100 or H200 for the 13B's gate/up: one row, no K split
    monkeypatch.setattr(w4a16_kernels, "fused_config", lambda *shape: dict(ONE_ROW_NO_SPLIT))

    served = layer.silu_mul(x[:1])  # x in the checkpoint's order: the layer gathers its act-order itself

    assert torch.equal(served, w4a16_kernels.silu_mul_matmul(x[:1, layer.perm], *args, ONE_ROW_NO_SPLIT))
    assert w4a16_kernels.silu_mul_matmul(x[:1], *args, dict(ONE_ROW_NO_SPLIT, split=2)) is None  # sums in parts
    assert w4a16_kernels.silu_mul_matmul(x[:1], *args, dict(ONE_ROW_NO_SPLIT, BLOCK_N=128)) is None  # 96 % 64
    assert w4a16_kernels.silu_mul_matmul(x, *args, dict(ONE_ROW_NO_SPLIT, kernel="swap", BLOCK_M=16)) is None
    assert layer.silu_mul(x) is None  # two rows
    monkeypatch.setattr(w4a16_kernels, "SILU_MUL_EPILOGUE", False)  # the benchmark's switch
    assert layer.silu_mul(x[:1]) is None
    monkeypatch.setattr(w4a16_kernels, "SILU_MUL_EPILOGUE", True)
    layer.bias = torch.nn.Parameter(torch.ones(192, dtype=torch.bfloat16), requires_grad=False)
    assert layer.silu_mul(x[:1]) is None  # a bias is added after the sums


@pytest.fixture(scope="module")
def gpu_13b_layer():
    """A 13B-shaped (5120 × 5120) act-order layer on the GPU, quantized once for the tests that use it."""
    tensors, layer = quantized_layer(5120, 5120, 128, True, False, seed=14, dtype=torch.bfloat16)
    return tensors, layer.cuda()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="wgmma, which one dot is for, runs on a GPU only")
@pytest.mark.parametrize("rows,warps", [(17, 8), (32, 8), (32, 4)])
def test_one_dot_gives_the_eight_dots_sums_bit_for_bit_on_the_gpu(gpu_13b_layer, rows, warps):
    # One dot of K = 128 runs the same 8 MMA steps into one accumulator in the same order as 8 dots of K = 16:
    # whichever a config picks, an answer's tokens are the same.
    tensors, layer = gpu_13b_layer
    x = torch.randn(rows, 5120, generator=torch.Generator().manual_seed(15)).bfloat16().cuda()
    config = dict(kernel="swap", BLOCK_M=32, BLOCK_N=128, BLOCK_K=128, split=4, num_warps=warps, num_stages=3)

    eight, one = (w4a16_kernels.matmul_partials(x[:, layer.perm], layer.packed, layer.scales, layer.zeros,
                                                128, dict(config, one_dot=one_dot)) for one_dot in (False, True))

    assert torch.equal(one, eight)
    assert relative_error(one.sum(0).cpu(), x.float().cpu() @ dequantize(tensors, 4).T) < 4e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the bf16x2 assembly runs on a GPU only")
@pytest.mark.parametrize("block_n", [32, 64])
def test_one_row_gate_up_kernel_gives_the_silu_kernels_answer_bit_for_bit_on_the_gpu(block_n):
    # the compiled kernel (bf16x2 assembly, overlapping launch) at the 13B's K and its tuned gate/up config
    tensors, layer = quantized_layer(2 * 1024, 5120, 128, True, False, seed=20, dtype=torch.bfloat16)
    layer = layer.cuda()
    x = torch.randn(1, 5120, generator=torch.Generator().manual_seed(21)).bfloat16().cuda()[:, layer.perm]

    fused, two_kernels = gate_up_sums(x, layer, dict(ONE_ROW_NO_SPLIT, BLOCK_N=block_n))

    assert torch.equal(fused, two_kernels)
    gate_up = x.float().cpu() @ dequantize(tensors, 4)[:, layer.perm.cpu()].T
    want = torch.nn.functional.silu(gate_up[:, :1024]) * gate_up[:, 1024:]
    assert relative_error(fused.cpu(), want) < 2e-2


HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.skipif(not HOPPER or w4a16_kernels.copy_warps is None, reason="TMA and wgmma: an H100/H200 only")
@pytest.mark.parametrize("rows,split,maxnreg", [(17, 1, None), (32, 1, None), (32, 4, 128), (20, 5, 128),
                                                 (2, 1, 128), (9, 5, 128), (16, 6, None)])
def test_copy_warp_kernel_gives_the_swap_kernels_sums_on_the_gpu(gpu_13b_layer, rows, split, maxnreg):
    # Tuned configs may swap one kernel for the other per layer shape: an answer must not change with them. Rows
    # of the 2-16 bucket run in tiles of 16 rows, as its tuned configs say.
    tensors, layer = gpu_13b_layer
    x = torch.randn(rows, 5120, generator=torch.Generator().manual_seed(16)).bfloat16().cuda()
    config = dict(BLOCK_M=w4a16_kernels.rows_bucket(rows), BLOCK_N=128, BLOCK_K=128, split=split, num_stages=4)
    copy_config = dict(config, kernel="copy_warps", num_warps=4, **({"maxnreg": maxnreg} if maxnreg else {}))
    assert w4a16_kernels.copy_warps_serve(x.device)

    swap, copying = (w4a16_kernels.matmul_partials(x[:, layer.perm], layer.packed, layer.scales, layer.zeros, 128, c)
                     for c in (dict(config, kernel="swap", num_warps=8), copy_config))

    assert copying.dtype == swap.dtype == (torch.bfloat16 if split == 1 else torch.float32)
    assert relative_error(copying.float().sum(0), swap.float().sum(0)) < 1e-5
    assert relative_error(copying.float().sum(0).cpu(), x.float().cpu() @ dequantize(tensors, 4).T) < 4e-3


@pytest.mark.skipif(not HOPPER or w4a16_kernels.copy_warps is None, reason="TMA and wgmma: an H100/H200 only")
def test_rows_a_tma_copy_cannot_take_go_to_the_triton_kernel_on_the_gpu(gpu_13b_layer):
    # A row stride of 5,121 bf16 is no multiple of 16 bytes: TMA refuses it, the answer still comes.
    tensors, layer = gpu_13b_layer
    x = torch.randn(32, 5120, generator=torch.Generator().manual_seed(17)).bfloat16().cuda()
    rows = torch.zeros(32, 5121, dtype=torch.bfloat16, device="cuda")
    rows[:, :5120] = x[:, layer.perm]
    config = dict(kernel="copy_warps", BLOCK_M=32, BLOCK_N=128, BLOCK_K=128, split=4, num_warps=4, num_stages=4)

    partials = w4a16_kernels.matmul_partials(rows[:, :5120], layer.packed, layer.scales, layer.zeros, 128, config)

    assert relative_error(partials.float().sum(0).cpu(), x.float().cpu() @ dequantize(tensors, 4).T) < 4e-3


@pytest.mark.skipif(w4a16_kernels.copy_warps is None, reason="Triton without Gluon: the kernel is not served")
def test_only_tensors_a_tma_copy_takes_go_to_the_copy_warp_kernel():
    _, layer = quantized_layer(256, 512, 128, False, False, seed=18, dtype=torch.bfloat16)
    fits = w4a16_kernels.copy_warps.fits
    weights = (layer.packed, layer.scales, layer.zeros)
    buffer = torch.randn(32 * 521 + 1, dtype=torch.bfloat16)
    rows = buffer[: 32 * 512].view(32, 512)

    assert fits(rows, *weights, 128)
    assert not fits(buffer[: 32 * 521].view(32, 521)[:, :512], *weights, 128)  # rows 1,042 bytes apart
    assert not fits(buffer[1 : 1 + 32 * 512].view(32, 512), *weights, 128)  # starts 2 bytes past an alignment
    assert not fits(rows.half(), *weights, 128)  # the codes become bf16 only
    assert not fits(rows, *weights, 64)  # groups under 128: codes not spread
    assert not fits(rows, *(t[:, 1:] for t in weights), 128)  # a column slice starting mid-alignment


def test_bias_is_added_once_whatever_the_split():
    tensors, layer = quantized_layer(128, 1024, 128, True, False, seed=9, dtype=torch.float32)
    layer.bias = torch.nn.Parameter(torch.randn(128, generator=torch.Generator().manual_seed(10)), requires_grad=False)
    x = torch.randn(1, 1024, generator=torch.Generator().manual_seed(11))

    partials = layer.partials(x)

    assert partials.shape[0] > 1  # K split: the bias must not be added per split
    want = x @ dequantize(tensors, 4).T + layer.bias
    assert relative_error(layer(x), want) < 1e-5
    assert relative_error(partials.sum(0), want) < 1e-5


@pytest.mark.parametrize("group,spread", [(128, 16), (256, 16), (64, 1), (32, 1)])
def test_packed_words_hold_the_inputs_the_layout_says(group, spread):
    codes = torch.randint(0, 16, (1024, 24), generator=torch.Generator().manual_seed(group), dtype=torch.int32)

    packed = w4a16_kernels.pack_codes(codes, group)

    assert w4a16_kernels.code_spread(group) == spread
    word = 3 + 16 * 5  # word row 3 of the sixth block of 128 inputs
    want = [5 * 128 + 3 + spread * j for j in range(8)] if spread > 1 else [8 * word + j for j in range(8)]
    assert [int((packed[word, 7] >> (4 * j)) & 0xF) for j in range(8)] == [int(codes[k, 7]) for k in want]
    assert torch.equal(w4a16_kernels.unpack_codes(packed, group), codes)


def test_kernel_choice_follows_rows_and_group_size():
    pick = w4a16_kernels.kernel_for
    assert [pick(b, 128) for b in (1, 16, 32, 64)] == ["gemv", "swap", "swap", "unpacked"]
    assert [pick(b, 64) for b in (1, 16, 32, 64)] == ["gemv", "unpacked", "unpacked", "unpacked"]


def test_long_prompts_rebuild_weights_in_chunks(monkeypatch):
    monkeypatch.setattr(w4a16_kernels, "_scratch", {})
    tensors, layer = quantized_layer(96, 256, 64, True, False, seed=2, dtype=torch.bfloat16)
    monkeypatch.setattr(w4a16_kernels, "SCRATCH_ELEMENTS", 64 * 256)  # W's 96 columns in chunks of 64
    x = torch.randn(3, 40, 256, generator=torch.Generator().manual_seed(4)).bfloat16()  # 120 rows > 64

    out = layer(x)

    assert out.shape == (3, 40, 96)
    want = x.float() @ dequantize(tensors, 4).T
    assert relative_error(out, want) < 4e-3
    # the only 16-bit weight memory, used in two chunks
    assert w4a16_kernels._scratch[CPU, torch.bfloat16].numel() == 64 * 256


def test_fused_qkv_slices_answer_like_separate_layers():
    gen = torch.Generator().manual_seed(3)
    g_idx = act_order_g_idx(256, 32, gen)
    parts = {name: quantize_weight(torch.randn(n, 256, generator=gen), 4, 32, False, g_idx)
             for name, n in (("q_proj", 128), ("k_proj", 64), ("v_proj", 64))}
    codes = {f"layer.{name}": Int4Codes.from_gptq(t, 32, 1, CPU) for name, t in parts.items()}
    modules, fused = build_int4_modules(codes, torch.float32, TritonInt4Linear)
    x = torch.randn(5, 256, generator=gen)

    assert set(fused) == {"layer.qkv_proj"}
    whole = fused["layer.qkv_proj"](x)
    start = 0
    for name, t in parts.items():
        want = x @ dequantize(t, 4).T
        got = modules[f"layer.{name}"](x)
        assert relative_error(got, want) < 1e-5
        assert relative_error(whole[:, start : start + want.shape[1]], want) < 1e-5
        start += want.shape[1]
    assert modules["layer.k_proj"].packed.data_ptr() == fused["layer.qkv_proj"].packed[0, 128].data_ptr()  # shared


def test_layouts_the_kernels_cannot_serve_are_refused():
    assert w4a16_kernels.layout_fits(5120, 128) and w4a16_kernels.layout_fits(13824, 128)
    assert not w4a16_kernels.layout_fits(200, 128)  # K not a whole number of groups
    assert not w4a16_kernels.layout_fits(4104, 8)  # groups smaller than one MMA step


def test_column_fp8_scales_bound_every_weight_of_their_column():
    tensors, layer = quantized_layer(96, 256, 64, True, False, seed=16)
    weight = dequantize(tensors, 4)  # [N, K]

    bound = w4a16_kernels.fp8_column_scales(layer.scales, layer.zeros) * w4a16_kernels.FP8_MAX

    assert bool((weight.abs().amax(dim=1) <= bound * (1 + 1e-6)).all())  # W / scale never past e4m3's range
    assert bool((weight.abs().amax(dim=1) >= 0.5 * bound).all())  # and not so loose that codes lose their bits


def test_each_prompt_row_goes_to_fp8_over_its_own_largest_value():
    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(21)).bfloat16()  # longer than one block
    x[1] = 0  # an all-zero row keeps a usable scale
    x[2, 4998] = 300.0  # the row's largest entry sits in its last, partial block

    x8, scales = w4a16_kernels.fp8_rows(x[:, :4999].contiguous())
    sliced8, sliced_scales = w4a16_kernels.fp8_rows(x[:, :4999])  # a view whose rows are not 4999 apart

    largest = x[:, :4999].float().abs().amax(dim=1, keepdim=True)
    assert torch.equal(scales[[0, 2]], largest[[0, 2]] / w4a16_kernels.FP8_MAX)
    assert scales[1].item() == pytest.approx(w4a16_kernels.TINY_FP8_SCALE) and not x8[1].float().any()
    # e4m3 keeps 3 mantissa bits (the interpreter's cast loses the carry of some round-ups: ~5% here; the GPU
    # test holds the codes to PyTorch's own cast)
    assert relative_error(x8.float() * scales, x[:, :4999].float()) < 8e-2
    assert x8.float().abs().amax() <= w4a16_kernels.FP8_MAX
    assert torch.equal(sliced8.float(), x8.float()) and torch.equal(sliced_scales, scales)


def test_prompts_in_fp8_stay_within_fp8_rounding_and_decoding_rows_do_not_change(monkeypatch):
    monkeypatch.setattr(w4a16_kernels, "_scratch", {})
    monkeypatch.setattr(w4a16_kernels, "SCRATCH_ELEMENTS", 64 * 256)  # W's 96 columns in chunks of 64
    tensors, layer = quantized_layer(96, 256, 128, True, False, seed=17, dtype=torch.bfloat16)
    x = torch.randn(100, 256, generator=torch.Generator().manual_seed(18)).bfloat16()
    want = x.float() @ dequantize(tensors, 4).T
    in_bf16, decoding = layer(x), layer(x[:16])

    assert layer.use_fp8()
    in_fp8 = layer(x)

    # e4m3 keeps 3 mantissa bits: ~2.5% of each operand (the interpreter rounds ties away from zero: ~5% here)
    assert 1e-2 < relative_error(in_fp8, want) < 8e-2
    assert relative_error(in_bf16, want) < 4e-3
    assert torch.equal(layer(x[:16]), decoding)  # up to 64 rows: the fused kernels, as before
    assert w4a16_kernels._scratch[CPU, torch.float8_e4m3fn].element_size() == 1
    q_rows = layer.output_slice(0, 48)  # a fused q/k/v's part keeps its columns' scales
    assert torch.equal(q_rows.column_scales, layer.column_scales[:48])
    assert relative_error(q_rows(x), in_fp8[:, :48].float()) < 1e-6


def test_a_layer_fp8_gemms_cannot_take_stays_in_its_dtype():
    _, layer = quantized_layer(40, 256, 128, False, False, seed=19, dtype=torch.bfloat16)  # 40 outputs: not 16s

    assert not layer.use_fp8()
    assert layer.column_scales is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="e4m3 rounding as the GPU does it (to nearest even)")
def test_fp8_prompt_matmul_is_torchs_own_scaled_mm_of_the_same_weights_on_the_gpu(gpu_13b_layer):
    tensors, layer = gpu_13b_layer
    x = torch.randn(300, 5120, generator=torch.Generator().manual_seed(20)).bfloat16().cuda()[:, layer.perm]
    column_scales = w4a16_kernels.fp8_column_scales(layer.scales, layer.zeros)
    weight = dequantize(tensors, 4)[:, layer.perm.cpu()].cuda()  # [N, K] in the layer's input order
    torch_w8 = (weight / column_scales[:, None]).to(torch.float8_e4m3fn)  # torch's own float-to-e4m3
    x_scales = (x.float().abs().amax(dim=-1, keepdim=True) / 448).clamp(min=1e-12)  # torch's own row scaling
    x8 = (x.float() / x_scales).to(torch.float8_e4m3fn)
    ours_x8, ours_x_scales = w4a16_kernels.fp8_rows(x)

    ours_w8 = w4a16_kernels.dequantize_columns(layer.packed, layer.scales, layer.zeros, 128, 0, 5120,
                                               torch.empty(5120 * 5120, device="cuda", dtype=torch.float8_e4m3fn),
                                               column_scales.reciprocal())
    got = w4a16_kernels.fp8_dequantized_matmul(x, layer.packed, layer.scales, layer.zeros, 128, column_scales)

    assert (ours_w8.T.float() == torch_w8.float()).float().mean() > 0.999  # fp32 W / scale: the odd last-bit tie
    assert torch.equal(ours_x_scales, x_scales)
    assert (ours_x8.float() == x8.float()).float().mean() > 0.999
    want = torch._scaled_mm(x8, torch_w8.T, scale_a=x_scales, scale_b=column_scales[None], out_dtype=torch.bfloat16)
    assert relative_error(got, want.float()) < 1e-3
    assert relative_error(got, x.float() @ weight.T) < 5e-2
