"""A captured prefill pass's shapes and inputs (the capture itself needs a GPU: test_architectures_gpu.py)."""

from __future__ import annotations

from worker.inference.prefill_graph import (
    PREFILL_GRAPH_ROWS,
    START_ROWS,
    all_shapes,
    length_buckets,
    pass_inputs,
    pass_shape,
    prompt_buckets,
)

BUCKETS = [1, 2, 4, 8, 16, 32]


def test_a_pass_is_padded_to_the_next_prompt_bucket_and_length_bucket():
    assert pass_shape(1, 1, BUCKETS, 2048) == (1, 64)
    assert pass_shape(3, 64, BUCKETS, 2048) == (4, 64)
    assert pass_shape(1, 500, BUCKETS, 2048) == (1, 512)
    assert pass_shape(8, 500, BUCKETS, 2048) == (8, 512)  # a 500-token burst's groups
    assert pass_shape(11, 60, BUCKETS, 2048) == (16, 64)
    assert pass_shape(1, 1000, BUCKETS, 2048) == (1, 1024)
    assert pass_shape(1, 1025, BUCKETS, 2048) == (1, 1280)


def test_length_buckets_step_by_64_then_128_then_256_up_to_the_cache():
    buckets = length_buckets(2048)
    assert buckets[:8] == list(range(64, 513, 64))
    assert buckets[8:12] == [640, 768, 896, 1024]
    assert buckets[12:] == [1280, 1536, 1792, 2048]
    assert all((b - a) / a <= 0.25 for a, b in zip(buckets[7:], buckets[8:]))  # past 512 tokens, < 25% padding
    assert length_buckets(600) == list(range(64, 513, 64))  # none past the cache
    assert length_buckets(100) == [64]


def test_no_graph_past_the_row_limit_the_largest_bucket_or_the_cache():
    assert pass_shape(9, 500, BUCKETS, 2048) is None  # 16 x 512 rows > PREFILL_GRAPH_ROWS: eager
    assert 16 * 512 > PREFILL_GRAPH_ROWS >= 8 * 512
    assert pass_shape(32, 64, BUCKETS, 2048) == (32, 64) and pass_shape(32, 129, BUCKETS, 2048) is None
    assert pass_shape(33, 64, BUCKETS, 2048) is None
    assert pass_shape(2, 10, [1], 2048) is None
    assert pass_shape(1, 500, BUCKETS, 500) is None  # padded to 512, past a 500-entry cache
    assert pass_shape(1, 2000, BUCKETS, 2000) is None  # no bucket between 1,792 and a 2,000-entry cache's end


def test_prompt_counts_between_the_batch_buckets_pad_a_pass_by_at_most_half_again():
    counts = prompt_buckets(BUCKETS)
    assert counts == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    assert pass_shape(5, 500, counts, 2048) == (6, 512)  # was 8 x 512: 60% more rows than the 5 prompts
    assert pass_shape(6, 500, counts, 2048) == (6, 512) and pass_shape(7, 500, counts, 2048) == (8, 512)
    assert pass_shape(18, 60, counts, 2048) == (24, 64)  # was 32 x 64
    assert all(prompts / pass_shape(prompts, 64, counts, 2048)[0] >= 2 / 3 for prompts in range(1, 33))
    assert prompt_buckets([1, 2, 4, 8, 12]) == [1, 2, 3, 4, 6, 8, 12]  # none between 8 and a max_batch of 12
    assert prompt_buckets([1]) == [1]


def test_every_shape_a_pass_can_take_is_captured_the_small_ones_at_start_fewest_rows_first():
    shapes = all_shapes(prompt_buckets(BUCKETS), 2048)
    assert len(shapes) == 87
    assert shapes == sorted(shapes, key=lambda shape: shape[0] * shape[1])
    counts = prompt_buckets(BUCKETS)
    assert {pass_shape(b, n, counts, 2048) for b, n in shapes} == set(shapes)  # every pass lands on one of them
    assert pass_shape(8, 500, counts, 2048) in shapes and pass_shape(32, 64, counts, 2048) in shapes
    # at start the batch buckets' counts only, as before the in-between ones: the start does not wait for those
    at_start = [shape for shape in shapes if shape[0] * shape[1] <= START_ROWS and shape[0] in BUCKETS]
    assert len(at_start) == 27 and (1, 512) in at_start and (8, 512) not in at_start


def test_pass_inputs_pad_each_prompt_and_mark_padding_prompts_with_slot_minus_one():
    host = pass_inputs([[5, 6, 7], [8]], first_slot=3, batch=4, length=4)
    tokens, last, slots = host[:16].view(4, 4), host[16:20], host[20:]
    assert tokens.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert last.tolist() == [2, 0, 0, 0]
    assert slots.tolist() == [3, 4, -1, -1]
