"""What the new one-row int4 kernel's bf16 arithmetic does to a real instruct model's answers, on the CPU: the
offline demo model (SmolLM2-135M-Instruct, 4-bit), with that arithmetic emulated exactly in PyTorch.

The new kernel, for one activation row x (bf16) and each output column n, sums each word of 8 input channels
(k = 8w .. 8w+7 in the packed order, all in one group g) in a bf16 accumulator:
acc = bf16(acc + (code[k, n] - zero[g, n]) * x[k]) for the 8 channels in order (a fused multiply-add, one
rounding), then out[n] = sum over words of acc_w * scale[g, n] in fp32. Emulated here as acc.float() + product in
fp32 (the product of a small integer and a bf16 is exact there) rounded .to(bfloat16); first checked on a random
layer against the same formula computed slowly in float64 word by word, and its error against the exact product
printed (~3.5e-3, bf16 output rounding ~1.7e-3).

The reference is today's GPU arithmetic, emulated on the same weights: W = scale (fp16) * (code - zero), exact
in fp32, sums in fp32, output rounded to bf16 (the CPU's own tinygemm path rounds scales and offsets to bf16,
so it is not used). Compared with it, as in benchmarks/quality/kv_cache_quality.py (greedy answers identical, where
they first diverge, teacher-forced next-token agreement and mean KL):
- bf16_products: the new kernel's arithmetic on every one-row call (decode steps, greedy and teacher-forced);
  the prompts' multi-row prefill keeps the reference path, as it would on the GPU (prompts < 64 rows);
- fp32_model_vs_bf16: the floor, the whole model in fp32 (bf16's own rounding everywhere else);
- bf16_weights: for scale, tinygemm-like arithmetic on every call: each W[n, k] rounded to bf16, fp32 sums.
The demo model's groups are 64 channels (hidden 576 is no multiple of 128); a word never straddles a group.

    python -m benchmarks.quality.bf16_products_quality [--new-tokens 48]   # ~7 min on 2 cores; JSON into $OUT when set
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import torch
from torch import nn

from benchmarks.quality.kv_cache_quality import QUESTIONS, agreement, greedy_answer, question_prompts
from benchmarks.result_json import write_result
from worker.inference.kv_cache import KVCache
from worker.inference.llama_runtime import forward
from worker.kernels.w4a16 import code_position_inputs
from worker.model.demo_model import ensure_demo_model
from worker.model.gptq_layout import unpack_rows
from worker.model.loader import head_dim_of, load_model
from worker.model.triton_linear import TritonInt4Linear

ARITHMETICS = ("fp32_sums", "bf16_products", "bf16_weights")


def word_sums(x: torch.Tensor, diffs: torch.Tensor) -> torch.Tensor:
    """The new kernel's bf16 accumulators [K/8, N]: x [K] (bf16), diffs [8, K/8, N] = code - zero (fp32)."""
    xw = x.float().view(-1, 8)
    acc = torch.zeros(diffs.shape[1:], dtype=torch.bfloat16)
    for j in range(8):
        acc = torch.addcmul(acc.float(), diffs[j], xw[:, j, None]).to(torch.bfloat16)  # product exact in fp32
    return acc


def bf16_products_matvec(x: torch.Tensor, diffs: torch.Tensor, word_scales: torch.Tensor) -> torch.Tensor:
    """The new kernel's output [N] in fp32 (before rounding): word accumulators times their scale, summed."""
    return (word_sums(x, diffs).float() * word_scales).sum(0)


class EmulatedInt4Linear(nn.Module):
    """An int4 layer (the GPU layer's codes, fp16 scales, uint8 zeros) computing in one of ``ARITHMETICS``."""

    def __init__(self, codes, scales, zeros, group_size: int, perm=None, bias=None):
        super().__init__()
        self.in_features, self.out_features = codes.shape
        self.codes, self.scales, self.zeros = codes, scales.float(), zeros.float()  # [K, N], [K/G, N] x 2
        self.group_size, self.perm, self.bias = group_size, perm, bias
        self.arithmetic = "fp32_sums"

    @classmethod
    def of(cls, layer: TritonInt4Linear) -> EmulatedInt4Linear:
        """Codes in the packed order (words as the kernel sums them); x gathered to match (``code_position_inputs``)."""
        codes = unpack_rows(layer.packed, 4).to(torch.uint8)
        order = code_position_inputs(layer.in_features, layer.group_size, codes.device)
        perm = order if layer.perm is None else layer.perm[order]
        return cls(codes, layer.scales, layer.zeros, layer.group_size, perm, layer.bias)

    @functools.cached_property
    def diffs(self) -> torch.Tensor:
        """code - zero [8, K/8, N]: [j, w] is word w's code j (packed position 8w + j; ``of`` gathers x to match)."""
        exact = self.codes.float() - self.zeros.repeat_interleave(self.group_size, 0)
        return exact.view(-1, 8, self.out_features).transpose(0, 1).contiguous()

    @functools.cached_property
    def word_scales(self) -> torch.Tensor:
        return self.scales.repeat_interleave(self.group_size // 8, 0)

    @functools.cached_property
    def weight_t(self) -> torch.Tensor:
        """W.T [K, N], exact in fp32 (an fp16 scale times a small integer)."""
        return self.diffs.transpose(0, 1).reshape(self.in_features, -1) * self.word_scales.repeat_interleave(8, 0)

    @functools.cached_property
    def weight_t_bf16(self) -> torch.Tensor:
        return self.weight_t.to(torch.bfloat16).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.perm is not None:
            rows = rows[:, self.perm]
        if self.arithmetic == "bf16_products" and rows.shape[0] == 1:
            out = bf16_products_matvec(rows[0], self.diffs, self.word_scales)[None]
        elif self.arithmetic == "bf16_weights":
            out = rows.float() @ self.weight_t_bf16
        else:
            out = rows.float() @ self.weight_t
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def load_emulated(dtype: torch.dtype):
    """The demo model with each int4 layer (the GPU's layout; its Triton kernels never run) emulated."""
    loaded = load_model(ensure_demo_model(), device="cpu", dtype=dtype, int4_kernel="triton")
    for name, module in list(loaded.model.named_modules()):
        if isinstance(module, TritonInt4Linear):
            parent, _, child = name.rpartition(".")
            setattr(loaded.model.get_submodule(parent), child, EmulatedInt4Linear.of(module))
    return loaded


def set_arithmetic(model: nn.Module, arithmetic: str) -> None:
    assert arithmetic in ARITHMETICS, arithmetic
    for module in model.modules():
        if isinstance(module, EmulatedInt4Linear):
            module.arithmetic = arithmetic


def round_to_bf16_f64(v: torch.Tensor) -> torch.Tensor:
    """float64 values rounded once to bf16's 8 significant bits (nearest, ties to even), still float64."""
    mantissa, exponent = torch.frexp(v)
    return torch.ldexp(torch.round(mantissa * 256), exponent - 8)


def slow_reference(x, codes, scales, zeros, group_size: int):
    """The new kernel's formula in float64, word by word: (word accumulators [K/8, N], output [N])."""
    x, codes, scales, zeros = x.double(), codes.double(), scales.double(), zeros.double()
    accs = []
    for w in range(codes.shape[0] // 8):
        g = 8 * w // group_size
        acc = torch.zeros(codes.shape[1], dtype=torch.float64)
        for k in range(8 * w, 8 * w + 8):
            acc = round_to_bf16_f64(acc + (codes[k] - zeros[g]) * x[k])
        accs.append(acc)
    accs = torch.stack(accs)
    word_scales = scales.repeat_interleave(group_size // 8, 0)
    return accs, (accs * word_scales).sum(0)


def relative_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    return float((value.double() - exact).norm() / exact.norm())


def check_emulation(k: int = 4096, n: int = 4096, group_size: int = 128) -> dict:
    """The emulation on a random layer: asserted equal to ``slow_reference``; errors against the exact product."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (k, n), generator=gen)
    zeros = torch.randint(0, 16, (k // group_size, n), generator=gen, dtype=torch.uint8)
    scales = (torch.rand(k // group_size, n, generator=gen) * 0.02 + 0.001).half()
    x = torch.randn(k, generator=gen).bfloat16()
    layer = EmulatedInt4Linear(codes, scales, zeros, group_size)
    out = bf16_products_matvec(x, layer.diffs, layer.word_scales)
    accs, slow_out = slow_reference(x, codes, scales, zeros, group_size)
    assert torch.equal(word_sums(x, layer.diffs).double(), accs), "bf16 word accumulators differ from float64's"
    assert relative_error(out, slow_out) < 1e-6, relative_error(out, slow_out)
    exact = x.double() @ layer.weight_t.double()
    bf16_weights = x.float() @ layer.weight_t_bf16
    return dict(shape=[k, n], group_size=group_size, exact_rounded_to_bf16=relative_error(exact.bfloat16(), exact),
                bf16_products_fp32_out=relative_error(out, exact),
                bf16_products_bf16_out=relative_error(out.bfloat16(), exact),
                bf16_weights_fp32_out=relative_error(bf16_weights, exact),
                bf16_weights_bf16_out=relative_error(bf16_weights.bfloat16(), exact))


def greedy_answers(loaded, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    return [greedy_answer(loaded, prompt, new_tokens, None) for prompt in prompts]


def forced_logits(loaded, prompts: list[list[int]], answers: list[list[int]]) -> list[torch.Tensor]:
    """Per prompt: the next-token logits at the positions of its (reference) answer. As decoding does, and unlike
    kv_cache_quality.teacher_forced_logits (the prompt one token at a time: twice the steps here), the prompt is
    prefilled at once and the answer fed token by token."""
    config = loaded.model.config
    head_dim = head_dim_of(config)
    result = []
    for prompt, answer in zip(prompts, answers):
        ids, start = torch.tensor([prompt + answer]), len(prompt)
        cache = KVCache(config.num_hidden_layers, 1, config.num_key_value_heads, ids.shape[1], head_dim, "cpu",
                        loaded.dtype)
        with torch.inference_mode():
            steps = [forward(loaded.model, cache, ids[:, :start], torch.arange(start), ids.shape[1], True)[0]]
            steps += [forward(loaded.model, cache, ids[:, t : t + 1], torch.tensor([t]), ids.shape[1], True)[0]
                      for t in range(start, ids.shape[1] - 1)]
        result.append(torch.cat(steps).float())
    return result


def print_table(report: dict, names: list[str]) -> None:
    print(f"\n{'vs reference (fp32 sums, bf16 model)':<38}{'identical':>10}{'top-1 agree':>13}{'mean KL':>10}")
    for name in names:
        r = report[name]
        print(f"{name:<38}{r['identical_answers']:>7}/{len(QUESTIONS):<2}{r['teacher_forced_top1_agreement']:>13.4f}"
              f"{r['mean_kl']:>10.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    start = time.time()
    report = dict(model="SmolLM2-135M-Instruct 4-bit (demo, group 64), bf16, int4 layers emulated in PyTorch",
                  reference="today's kernel arithmetic: W = fp16 scale * (code - zero) exact in fp32, fp32 sums, "
                            "bf16 output, every call",
                  bf16_products_applies_to="one-row calls (decode steps, greedy and teacher-forced); the "
                                           "prompt's multi-row prefill keeps the reference arithmetic",
                  bf16_weights_applies_to="every call", questions=len(QUESTIONS), new_tokens=args.new_tokens)
    report["random_layer_relative_error"] = check_emulation()
    print("random layer, relative error vs exact fp64:", json.dumps(report["random_layer_relative_error"]), flush=True)

    loaded = load_emulated(torch.bfloat16)
    prompts = question_prompts(loaded)
    ref_answers = greedy_answers(loaded, prompts, args.new_tokens)
    ref_logits = forced_logits(loaded, prompts, ref_answers)
    in_fp32 = load_emulated(torch.float32)
    variants = (("bf16_products", loaded, "bf16_products"), ("fp32_model_vs_bf16", in_fp32, "fp32_sums"),
                ("bf16_weights", loaded, "bf16_weights"))
    for name, model, arithmetic in variants:
        set_arithmetic(model.model, arithmetic)
        answers = greedy_answers(model, prompts, args.new_tokens)
        report[name] = agreement(ref_answers, answers, ref_logits, forced_logits(model, prompts, ref_answers))
        print(name, json.dumps(report[name]), f"({time.time() - start:.0f} s)", flush=True)
    report["seconds"] = round(time.time() - start)
    print_table(report, [name for name, _, _ in variants])
    write_result("bf16_products_quality", report)


if __name__ == "__main__":
    main()
