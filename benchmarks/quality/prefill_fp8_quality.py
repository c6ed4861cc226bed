"""What fp8 prefill (``XWINBOT_PREFILL_DTYPE=fp8``) does to a real instruct model's next-token choices, on the CPU:
the offline demo model (SmolLM2-135M-Instruct, 4-bit) on our Triton int4 layers (Triton's interpreter here), each
question's prompt and its greedy answer (64 tokens: every prefill has more than 64 rows, the rebuild path) run as
one prompt (every position's logits from one prefill, as a long prompt or a file's text is read). The reference is
the int4 model in fp32 (weights rebuilt in fp32: the exact product; the interpreter's bf16 dots are not reliable);
against it the same model with its prompt matmuls in fp8, and as the floor that bf16's own rounding gives, the
model in bf16 on PyTorch's int4 kernels (tinygemm, the CPU default). Reported: next-token agreement, over all
positions and where the reference's choice is clear (``CLEAR_LEAD``), and the mean KL divergence.

The interpreter rounds e4m3 ties away from zero where the GPU rounds them to even, and ties are common (W over its
column's scale is a multiple of 448 / 8 or so in the group that sets it), so the weights' fp8 error here is larger
than on a GPU (~4.7% against ~2.9% of a weight); ``--gpu-rounding`` rebuilds each chunk's fp8 weights with PyTorch's
own conversion (to nearest even, as the GPU's), the same scales and GEMM, for the GPU's figure.

    python -m benchmarks.quality.prefill_fp8_quality [--new-tokens 64] [--questions 10] [--gpu-rounding]  # into $OUT
"""

from __future__ import annotations

import argparse
import os

if not os.environ.get("TRITON_INTERPRET"):  # no GPU here: the Triton layers run in the interpreter
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.quality.kv_cache_quality import CLEAR_LEAD, greedy_answer, question_prompts  # noqa: E402
from benchmarks.result_json import write_result  # noqa: E402
from worker.inference.kv_cache import KVCache  # noqa: E402
from worker.inference.llama_runtime import forward  # noqa: E402
from worker.kernels import w4a16  # noqa: E402
from worker.model.demo_model import ensure_demo_model  # noqa: E402
from worker.model.loader import head_dim_of, load_model  # noqa: E402


def prefill_logits(loaded, ids: list[int]) -> torch.Tensor:
    """[T, V] fp32: every position's next-token logits from one prefill of ``ids``."""
    config = loaded.model.config
    cache = KVCache(config.num_hidden_layers, 1, config.num_key_value_heads, len(ids), head_dim_of(config), "cpu",
                    loaded.dtype)
    with torch.inference_mode():
        logits = forward(loaded.model, cache, torch.tensor([ids]), torch.arange(len(ids)), len(ids), False)[0]
    return logits.reshape(len(ids), -1).float()


def round_weights_as_the_gpu_does() -> None:
    """``dequantize_columns``' fp8 weights from PyTorch's float-to-e4m3 (ties to even) instead of the interpreter's."""
    rebuild = w4a16.dequantize_columns

    def to_nearest_even(packed, scales, zeros, group_size, col0, cols, out, inverse_column_scales=None):
        if inverse_column_scales is None:
            return rebuild(packed, scales, zeros, group_size, col0, cols, out)
        in_features = packed.shape[0] * 8
        exact = rebuild(packed, scales, zeros, group_size, col0, cols, torch.empty(in_features * cols))  # [K, cols]
        w8 = out[: in_features * cols].view(cols, in_features)
        w8.copy_((exact.T * inverse_column_scales[col0 : col0 + cols, None]).clamp(-w4a16.FP8_MAX, w4a16.FP8_MAX))
        return w8.T

    w4a16.dequantize_columns = to_nearest_even


def agreement(ref: list[torch.Tensor], other: list[torch.Tensor]) -> dict:
    same = torch.cat([r.argmax(-1) == o.argmax(-1) for r, o in zip(ref, other)])
    top2 = torch.cat([r.topk(2, dim=-1).values for r in ref])
    clear = (top2[:, 0] - top2[:, 1]) >= CLEAR_LEAD
    kl = [float(F.kl_div(o.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="batchmean"))
          for r, o in zip(ref, other)]
    return dict(top1_agreement=float(same.float().mean()), clear_choice_agreement=float(same[clear].float().mean()),
                clear_choice_share=float(clear.float().mean()), mean_kl=sum(kl) / len(kl), positions=len(same))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--gpu-rounding", action="store_true", help="fp8 weights rounded to nearest even")
    args = parser.parse_args()
    if args.gpu_rounding:
        round_weights_as_the_gpu_does()
    path = ensure_demo_model()
    tinygemm = load_model(path, device="cpu", int4_kernel="tinygemm")
    exact = load_model(path, device="cpu", int4_kernel="triton", dtype=torch.float32)
    sequences = [prompt + greedy_answer(tinygemm, prompt, args.new_tokens, None)
                 for prompt in question_prompts(tinygemm)[: args.questions]]
    sequences = [ids for ids in sequences if len(ids) > w4a16.FUSED_MAX_ROWS]  # an answer that ended early: too short
    bf16 = [prefill_logits(tinygemm, ids) for ids in sequences]
    fp32 = [prefill_logits(exact, ids) for ids in sequences]
    layers = [m for m in exact.model.modules() if callable(getattr(m, "use_fp8", None))]
    fp8_layers = sum(layer.use_fp8() for layer in layers)
    fp8 = [prefill_logits(exact, ids) for ids in sequences]
    result = dict(gpu_rounding=args.gpu_rounding, rows_per_prefill=[len(ids) for ids in sequences],
                  fp8_layers=fp8_layers, int4_layers=len(layers),
                  fp8_against_fp32=agreement(fp32, fp8), bf16_against_fp32=agreement(fp32, bf16))
    print(result, flush=True)
    write_result("prefill_fp8_quality", result)


if __name__ == "__main__":
    main()
