"""The decode attention kernels (worker.kernels.decode_attention) give what scaled_dot_product_attention gives for one
new token per row, each row reading only its own entries 0..position; optionally in the next matmul's order.

Without a GPU they run in Triton's interpreter (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from worker.kernels.decode_attention import decode_attention  # noqa: E402


def reference(q, keys, values, positions, scale):
    rows = []
    for b, position in enumerate(positions.tolist()):
        k, v = keys[b, :, : position + 1], values[b, :, : position + 1]
        rows.append(F.scaled_dot_product_attention(q[b : b + 1, :, None], k[None], v[None], scale=scale,
                                                   enable_gqa=True)[0, :, 0])
    return torch.stack(rows).reshape(len(rows), -1)


@pytest.mark.parametrize("ordered", [False, True])
def test_each_row_attends_to_its_own_entries_across_chunks(ordered):
    gen = torch.Generator().manual_seed(31)
    q_heads, kv_heads, dim, max_len = 4, 2, 16, 300
    keys = torch.randn(4, kv_heads, max_len, dim, generator=gen)
    values = torch.randn(4, kv_heads, max_len, dim, generator=gen)
    q = torch.randn(3, q_heads, dim, generator=gen)
    positions = torch.tensor([0, 150, 299])  # one entry; across the first chunk boundary; the whole window
    perm = torch.randperm(q_heads * dim, generator=gen)

    got = decode_attention(q, keys, values, positions, max_len, 0.25, torch.argsort(perm) if ordered else None)

    want = reference(q, keys, values, positions, 0.25)
    torch.testing.assert_close(got, want[:, perm] if ordered else want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk, warps", [(32, 2), (64, 8), (256, 4)])
def test_any_chunk_shape_gives_the_same_attention(chunk, warps):
    """The chunk programs' shape (entries, warps) is a speed setting: every shape gives the same answer."""
    gen = torch.Generator().manual_seed(33)
    keys, values = torch.randn(2, 2, 300, 16, generator=gen), torch.randn(2, 2, 300, 16, generator=gen)
    q, positions = torch.randn(2, 4, 16, generator=gen), torch.tensor([40, 299])

    got = decode_attention(q, keys, values, positions, 300, 0.25, chunk=chunk, num_warps=warps)

    torch.testing.assert_close(got, reference(q, keys, values, positions, 0.25), rtol=1e-5, atol=1e-5)


def test_entries_after_a_rows_position_do_not_count():
    gen = torch.Generator().manual_seed(32)
    keys, values = torch.randn(2, 1, 256, 8, generator=gen), torch.randn(2, 1, 256, 8, generator=gen)
    q = torch.randn(2, 1, 8, generator=gen)
    positions = torch.tensor([5, 200])
    before = decode_attention(q, keys, values, positions, 256, 0.3)

    keys[0, :, 6:], values[0, :, 6:] = 1e4, -1e4  # huge entries past row 0's position (and in later chunks)
    after = decode_attention(q, keys, values, positions, 256, 0.3)

    torch.testing.assert_close(after, before)
    assert torch.isfinite(after).all()


@pytest.mark.parametrize("window", [256, 300])
def test_a_sliding_window_keeps_only_each_rows_last_entries(window):
    """Mistral: a row at position p sees entries p - sliding + 1 .. p (transformers' sliding_window_overlay),
    whole chunks before them included in the skipping."""
    gen = torch.Generator().manual_seed(32)
    q_heads, kv_heads, dim, max_len, sliding = 4, 2, 16, 300, 40
    keys = torch.randn(4, kv_heads, max_len, dim, generator=gen)
    values = torch.randn(4, kv_heads, max_len, dim, generator=gen)
    q = torch.randn(4, q_heads, dim, generator=gen)
    positions = torch.tensor([0, 30, 150, 255])  # inside the window; at its edge; across a chunk; chunk 0 unseen

    got = decode_attention(q, keys, values, positions, window, 0.25, sliding_window=sliding)

    rows = []
    for b, position in enumerate(positions.tolist()):
        first = max(0, position - sliding + 1)
        k, v = keys[b, :, first : position + 1], values[b, :, first : position + 1]
        rows.append(F.scaled_dot_product_attention(q[b : b + 1, :, None], k[None], v[None], scale=0.25,
                                                   enable_gqa=True)[0, :, 0])
    want = torch.stack(rows).reshape(len(rows), -1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, reference(q, keys, values, positions, 0.25))  # the window changed rows 2 and 3


def test_an_fp8_cache_is_read_times_each_heads_k_and_v_scale():
    """An fp8 cache stores entries divided by their head's scale (worker.inference.kv_cache.KVCache): the
    kernel's result is attention over the entries multiplied back, here heads of very different sizes."""
    gen = torch.Generator().manual_seed(33)
    q_heads, kv_heads, dim, max_len = 4, 2, 16, 200
    stored_keys = (torch.randn(2, kv_heads, max_len, dim, generator=gen) * 100).to(torch.float8_e4m3fn)
    stored_values = (torch.randn(2, kv_heads, max_len, dim, generator=gen) * 100).to(torch.float8_e4m3fn)
    scales = torch.tensor([[0.02, 3.0], [1e-4, 0.5]])  # [K, V] x kv heads
    q = torch.randn(2, q_heads, dim, generator=gen)
    positions = torch.tensor([40, 199])

    got = decode_attention(q, stored_keys, stored_values, positions, max_len, 0.25, kv_scales=scales)

    keys = stored_keys.float() * scales[0].view(1, -1, 1, 1)
    values = stored_values.float() * scales[1].view(1, -1, 1, 1)
    torch.testing.assert_close(got, reference(q, keys, values, positions, 0.25), rtol=1e-4, atol=1e-3)  # ~900s


def windowed_reference(q, keys, values, positions, scale, sliding=None):
    """reference, each row seeing only its last ``sliding`` entries when given."""
    rows = []
    for b, position in enumerate(positions.tolist()):
        first = 0 if sliding is None else max(0, position - sliding + 1)
        k, v = keys[b, :, first : position + 1], values[b, :, first : position + 1]
        rows.append(F.scaled_dot_product_attention(q[b : b + 1, :, None], k[None], v[None], scale=scale,
                                                   enable_gqa=True)[0, :, 0])
    return torch.stack(rows).reshape(len(rows), -1)


@pytest.mark.parametrize("sliding", [None, 40])
@pytest.mark.parametrize("ordered", [False, True])
def test_an_int8_cache_is_read_times_each_entrys_k_and_v_scale(sliding, ordered):
    """An int8 cache (KVCache.token_scales) stores each (entry, kv head) vector as codes of its own scale: the
    kernel's result is attention over the cache as ``KVCache.read`` dequantizes it, here with entries ~1000x
    apart in size, rows at different lengths from slot 1 on (the kernel reads a window of slots), GQA (2 q heads a
    kv head), K divided by a scale per (kv head, channel) as well, and entries past each row's end that must not
    count."""
    from worker.inference.kv_cache import KVCache

    gen = torch.Generator().manual_seed(34)
    q_heads, kv_heads, dim, max_len, window = 4, 2, 16, 300, 256
    cache = KVCache(1, 4, kv_heads, max_len, dim, "cpu", torch.int8)
    cache.set_key_channel_scales(torch.rand(1, kv_heads, dim, generator=gen) + 0.01)  # [1/64, 1] per channel
    sizes = 10.0 ** torch.randint(-2, 2, (3, kv_heads, max_len, 1), generator=gen)  # per entry: 0.01 .. 10
    k = torch.randn(3, kv_heads, max_len, dim, generator=gen) * sizes
    v = torch.randn(3, kv_heads, max_len, dim, generator=gen) * sizes.flip(2)
    cache.write(0, 1, torch.arange(max_len).expand(3, max_len), k, v)
    q = torch.randn(3, q_heads, dim, generator=gen)
    positions = torch.tensor([0, 150, 255])  # one entry; across a chunk boundary; the whole window
    perm = torch.randperm(q_heads * dim, generator=gen)

    keys, values = cache.window(0, 1, 3, window)
    got = decode_attention(q, keys, values, positions, window, 0.25, torch.argsort(perm) if ordered else None,
                           sliding_window=sliding, token_scales=cache.window_token_scales(0, 1, 3, window),
                           key_channel_scales=cache.key_channel_scales[0])

    want = windowed_reference(q, *cache.read(0, 1, 3, window, torch.float32), positions, 0.25, sliding)
    # fp32 sums in another order over entries up to ~10 in size
    torch.testing.assert_close(got, want[:, perm] if ordered else want, rtol=1e-5, atol=1e-4)
    quantized = windowed_reference(q, k, v, positions, 0.25, sliding)
    assert not torch.equal(want, quantized)  # the codes really are a rounding of the entries
    unscaled = decode_attention(q, keys, values, positions, window, 0.25, torch.argsort(perm) if ordered else None,
                                sliding_window=sliding, token_scales=cache.window_token_scales(0, 1, 3, window))
    assert not torch.allclose(unscaled, got, rtol=0.05, atol=0.05)  # the channel scales are applied


def test_a_cache_has_per_head_or_per_token_scales_not_both():
    q, keys = torch.randn(1, 2, 16), torch.zeros(1, 2, 128, 16, dtype=torch.int8)
    with pytest.raises(ValueError, match="not both"):
        decode_attention(q, keys, keys, torch.tensor([3]), 128, 0.25, kv_scales=torch.ones(2, 2),
                         token_scales=torch.ones(2, 1, 2, 128))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the conversion's assembly runs on a GPU only")
def test_int8_codes_read_as_exactly_the_numbers_they_hold_on_the_gpu():
    """On a GPU int8 codes become fp32 by PRMT assembly, not Triton's conversion: the same attention, to fp32's
    rounding, as the same codes handed over as bf16 (which holds -128..127 exactly) and converted by Triton."""
    gen = torch.Generator().manual_seed(34)
    codes = torch.randint(-128, 128, (2, 2, 2, 300, 64), generator=gen, dtype=torch.int8).cuda()  # K/V, slots, ...
    token_scales = (torch.rand(2, 2, 2, 300, generator=gen) / 64).cuda()
    q, positions = torch.randn(2, 4, 64, generator=gen).cuda(), torch.tensor([5, 299]).cuda()
    got, want = (decode_attention(q, keys, values, positions, 300, 0.125, token_scales=token_scales)
                 for keys, values in (codes, codes.bfloat16()))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
