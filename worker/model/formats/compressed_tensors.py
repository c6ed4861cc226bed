"""compressed-tensors ``pack-quantized`` W4A16 checkpoints, as llm-compressor writes them.

Sources read: neuralmagic/compressed-tensors
``src/compressed_tensors/compressors/quantized_compressors/pack_quantized.py`` (``pack_to_int32``,
``compress_weight``, ``compression_param_info``) and ``.../quantized_compressors/base.py`` (which tensors are
saved). Per Linear with K inputs, N outputs and group size G (``strategy: channel``: one group, G = K):

- ``weight_packed`` int32 [N, K/8]: packed along the INPUT dimension, value k at bits ``4*(k % 8)`` of word
  [n, k // 8]; each value is the signed int4 code plus 8 (so 0..15).
- ``weight_scale`` [N, K/G] in the model's dtype (``channel``: [N, 1]).
- ``weight_zero_point`` (asymmetric group/channel only; symmetric checkpoints save none: zero 0): signed zero
  points plus 8, packed along dimension 0 (the outputs): int32 [ceil(N/8), K/G].
- optional ``weight_g_idx`` int [K] (``actorder: group``), ``weight_shape`` int [2] = (N, K).
- W[n, k] = weight_scale[n, g] * (signed_q[n, k] - signed_zp[n, g]) = scale * ((q + 8) - (zp + 8)).

Codes (already offset to 0..15) and zeros (+8; 8 when symmetric) are repacked into the GPTQ layout (v2 zeros).
"""

from __future__ import annotations

import torch
from torch import nn

from worker.errors import CheckpointError
from worker.model.checkpoint import TensorStore
from worker.model.formats.common import check_g_idx, check_shapes
from worker.model.gptq_layout import GPTQTensors, pack_columns, pack_rows, unpack_columns, unpack_rows
from worker.model.quant_config import QuantConfig

WEIGHT_SUFFIX = ".weight_packed"
OFFSET = 8  # unsigned storage of signed int4: value + 8


def read(store: TensorStore, prefix: str, linear: nn.Linear, quant: QuantConfig) -> GPTQTensors:
    in_features, out_features = linear.in_features, linear.out_features
    group = quant.group_for(in_features)
    n_groups = in_features // group
    what = (f"a 4-bit compressed-tensors {'channel' if quant.group_size <= 0 else f'group-{group}'} layer of "
            f"{in_features}->{out_features}")
    stored = {name: store.get(f"{prefix}.{name}") for name in ("weight_packed", "weight_scale")}
    check_shapes(prefix, stored, {"weight_packed": (out_features, in_features // 8),
                                  "weight_scale": (out_features, n_groups)}, what)
    shape = store.get_optional(f"{prefix}.weight_shape")
    if shape is not None and [int(v) for v in shape.flatten()] != [out_features, in_features]:
        raise CheckpointError(f"tensor {prefix}.weight_shape is {shape.tolist()}, expected "
                              f"[{out_features}, {in_features}]")
    q = unpack_columns(stored["weight_packed"], 4).T  # [K, N], 0..15
    zero_point = store.get_optional(f"{prefix}.weight_zero_point")
    if zero_point is None:
        if not quant.sym:
            raise CheckpointError(f"tensor {prefix}.weight_zero_point is missing: an asymmetric layer needs it")
        z = torch.full((n_groups, out_features), OFFSET, dtype=torch.int32)
    elif zero_point.dtype == torch.int32 and tuple(zero_point.shape) == (-(-out_features // 8), n_groups):
        z = unpack_rows(zero_point, 4)[:out_features].T  # packed: already +8
    elif tuple(zero_point.shape) == (out_features, n_groups):
        z = (zero_point.to(torch.int32) + OFFSET).T  # unpacked signed zero points
    else:
        raise CheckpointError(f"tensor {prefix}.weight_zero_point has shape {tuple(zero_point.shape)}, expected "
                              f"{(-(-out_features // 8), n_groups)} (packed) for {what}")
    g_idx = store.get_optional(f"{prefix}.weight_g_idx")
    if g_idx is not None and int(g_idx.min()) < 0:
        g_idx = None  # all -1: no act-order
    if g_idx is None:
        g_idx = torch.arange(in_features, dtype=torch.int32) // group
    else:
        check_shapes(prefix, {"weight_g_idx": g_idx}, {"weight_g_idx": (in_features,)}, what)
        check_g_idx(prefix, g_idx, n_groups, "weight_g_idx")
    return GPTQTensors(
        qweight=pack_rows(q.contiguous(), 4),
        qzeros=pack_columns(z.contiguous(), 4),
        scales=stored["weight_scale"].T.contiguous(),
        g_idx=g_idx.to(torch.int32),
        bias=store.get_optional(f"{prefix}.bias"),
    )
