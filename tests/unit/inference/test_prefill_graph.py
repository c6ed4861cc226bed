"""A captured prefill pass's shapes and inputs (the capture itself needs a GPU: test_architectures_gpu.py), and the
cache read it does by slot tensor instead of a first slot."""

from __future__ import annotations

import torch

from worker.inference.kv_cache import KVCache
from worker.inference.kv_quant import INT8
from worker.inference.prefill_graph import PREFILL_GRAPH_ROWS, pass_inputs, pass_shape

BUCKETS = [1, 2, 4, 8, 16, 32]


def test_a_pass_is_padded_to_the_next_prompt_bucket_and_length_step():
    assert pass_shape(1, 1, BUCKETS, 2048) == (1, 64)
    assert pass_shape(3, 64, BUCKETS, 2048) == (4, 64)
    assert pass_shape(1, 500, BUCKETS, 2048) == (1, 512)
    assert pass_shape(2, 500, BUCKETS, 2048) == (2, 512)
    assert pass_shape(11, 60, BUCKETS, 2048) == (16, 64)
    assert pass_shape(1, 1000, BUCKETS, 2048) == (1, 1024)


def test_no_graph_past_the_row_limit_the_largest_bucket_or_the_cache():
    assert pass_shape(3, 500, BUCKETS, 2048) is None  # 4 x 512 rows > PREFILL_GRAPH_ROWS: the GPU bounds it
    assert 4 * 512 > PREFILL_GRAPH_ROWS >= 2 * 512
    assert pass_shape(17, 64, BUCKETS, 2048) is None
    assert pass_shape(2, 10, [1], 2048) is None
    assert pass_shape(1, 500, BUCKETS, 500) is None  # padded to 512, past a 500-entry cache


def test_pass_inputs_pad_each_prompt_and_mark_padding_prompts_with_slot_minus_one():
    host = pass_inputs([[5, 6, 7], [8]], first_slot=3, batch=4, length=4)
    tokens, last, slots = host[:16].view(4, 4), host[16:20], host[20:]
    assert tokens.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert last.tolist() == [2, 0, 0, 0]
    assert slots.tolist() == [3, 4, -1, -1]


def test_reading_by_slot_tensor_gives_the_slots_windows_and_minus_one_reads_a_valid_slot():
    for dtype in (torch.bfloat16, INT8):
        cache = KVCache(2, 4, 2, 32, 8, "cpu", dtype)
        gen = torch.Generator().manual_seed(5)
        if dtype == INT8:
            cache.keys.copy_(torch.randint(-127, 128, cache.keys.shape, generator=gen, dtype=torch.int8))
            cache.values.copy_(torch.randint(-127, 128, cache.values.shape, generator=gen, dtype=torch.int8))
            cache.token_scales.copy_(torch.rand(cache.token_scales.shape, generator=gen))
        else:
            cache.keys.copy_(torch.randn(cache.keys.shape, generator=gen))
            cache.values.copy_(torch.randn(cache.values.shape, generator=gen))
        keys, values = cache.read(1, 0, 3, 16, torch.float32, slots=torch.tensor([2, 0, -1]))
        for row, slot in enumerate((2, 0)):
            want_k, want_v = cache.read(1, slot, 1, 16, torch.float32)
            assert torch.equal(keys[row], want_k[0]) and torch.equal(values[row], want_v[0])
        assert keys.shape == (3, 2, 16, 8) and torch.isfinite(keys[2]).all()
