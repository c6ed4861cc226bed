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
