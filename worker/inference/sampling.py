"""Generation settings and choosing the next token from logits (temperature, top-k, top-p).

``sample`` is written with tensor arguments only, so one compiled graph serves every request's settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from worker.settings import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P


@dataclass(frozen=True)
class GenerationParams:
    """Defaults are the settings' (``worker.settings``): the seed article's."""

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = DEFAULT_TOP_K
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    def __post_init__(self):
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"temperature must be between 0 and 5, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 (off) or positive, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")

    def replace(self, **changes) -> GenerationParams:
        return GenerationParams(**{**asdict(self), **changes})


DEFAULT_PARAMS = GenerationParams()  # frozen, so one shared instance serves as every default


@dataclass(frozen=True)
class SamplingTensors:
    """One column per sequence in the batch: ``rows`` [3, B] fp32 holds temperature [B], top_k [B] (0 = off; whole
    numbers, exact in fp32 up to 2^24) and top_p [B], so a batch's settings are written or moved in one copy."""

    rows: torch.Tensor

    @property
    def temperature(self) -> torch.Tensor:
        return self.rows[0]

    @property
    def top_k(self) -> torch.Tensor:
        return self.rows[1]

    @property
    def top_p(self) -> torch.Tensor:
        return self.rows[2]

    def as_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.temperature, self.top_k, self.top_p

    @classmethod
    def of(cls, params: list[GenerationParams], device: torch.device) -> SamplingTensors:
        return cls(torch.tensor([[p.temperature for p in params], [float(p.top_k) for p in params],
                                 [p.top_p for p in params]], dtype=torch.float32, device=device))


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> token ids [B]. Temperature 0 is greedy."""
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    scaled = logits / temperature.clamp(min=1e-5).unsqueeze(-1)
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    ranks = torch.arange(logits.shape[-1], device=logits.device).unsqueeze(0)
    outside_k = (top_k.unsqueeze(-1) > 0) & (ranks >= top_k.unsqueeze(-1))
    outside_p = mass_before > top_p.unsqueeze(-1)
    kept = sorted_logits.masked_fill(outside_k | outside_p, float("-inf")).softmax(dim=-1)
    # Exponential-race sampling: argmax(p / E) with E ~ Exp(1) draws index i with probability p_i.
    choice = (kept / torch.empty_like(kept).exponential_(1)).argmax(dim=-1, keepdim=True)
    sampled = order.gather(-1, choice).squeeze(-1)
    return torch.where(temperature <= 0, greedy, sampled)
