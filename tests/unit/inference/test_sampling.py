"""Sampling honours temperature, top-k and top-p; settings are validated."""

import pytest
import torch

from worker.inference.sampling import GenerationParams, SamplingTensors, sample


def draw(logits, params, n=400):
    t = SamplingTensors.of([params] * n, logits.device)
    return sample(logits.expand(n, -1), t.temperature, t.top_k, t.top_p)


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 3.0, 2.9, -1.0]])
    assert set(draw(logits, GenerationParams(temperature=0.0)).tolist()) == {1}


def test_seed_defaults_are_nearly_greedy():
    logits = torch.tensor([[0.1, 3.0, 2.9, -1.0]])
    assert set(draw(logits, GenerationParams()).tolist()) == {1}


def test_top_k_limits_the_candidates():
    logits = torch.zeros(1, 50)
    logits[0, :5] = 1.0
    tokens = set(draw(logits, GenerationParams(temperature=1.0, top_k=3, top_p=1.0)).tolist())
    assert tokens <= {0, 1, 2, 3, 4} and len(tokens) == 3


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    tokens = set(draw(probs.log(), GenerationParams(temperature=1.0, top_k=0, top_p=0.75)).tolist())
    assert tokens == {0, 1}


def test_high_temperature_spreads_choices():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    tokens = draw(logits, GenerationParams(temperature=1.0, top_k=0, top_p=1.0), n=2000)
    counts = torch.bincount(tokens, minlength=3).float() / 2000
    assert torch.allclose(counts, logits.softmax(-1)[0], atol=0.05)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(max_new_tokens=0)])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValueError):
        GenerationParams(**bad)
