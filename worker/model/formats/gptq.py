"""GPTQ checkpoints as AutoGPTQ (v1) and GPTQModel (v2) write them.

Sources read:
- AutoGPTQ/AutoGPTQ ``auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py`` (``pack``): ``qweight`` int32
  [K*bits/32, N] packed along the input dimension (input k at bits ``bits*(k % per)`` of row k // per);
  ``qzeros`` int32 [K/G, N*bits/32] packed along the output dimension, holding ``zero - 1`` (the "v1" format);
  ``scales`` fp16 [K/G, N]; ``g_idx`` int32 [K] (act-order, ``desc_act``); W = scales * (q - zero).
- ModelCloud/GPTQModel ``gptqmodel/utils/model.py`` (``convert_gptq_v1_to_v2_format``: for 4-bit it adds
  0x11111111 to every qzeros word, i.e. one to each nibble): ``gptq_v2`` stores the zero as it is, in the
  same packing. The layout version is ``checkpoint_format`` in quantize_config (newer GPTQModel: ``format``).

The tensors are handed on as stored; ``QuantConfig.zero_offset`` (1 for v1, 0 for v2) is added back on unpacking.
"""

from __future__ import annotations

import torch
from torch import nn

from worker.errors import CheckpointError
from worker.model.checkpoint import TensorStore
from worker.model.formats.common import check_g_idx, check_shapes
from worker.model.gptq_layout import GPTQTensors, values_per_word
from worker.model.quant_config import QuantConfig

WEIGHT_SUFFIX = ".qweight"


def read(store: TensorStore, prefix: str, linear: nn.Linear, quant: QuantConfig) -> GPTQTensors:
    """The GPTQ tensors of one Linear, checked against the shapes the architecture expects."""
    in_features, out_features = linear.in_features, linear.out_features
    group = quant.group_for(in_features)
    per = values_per_word(quant.bits)
    g_idx = store.get_optional(f"{prefix}.g_idx")
    if g_idx is None and quant.desc_act:
        raise CheckpointError(f"tensor {prefix}.g_idx is missing: an act-order (desc_act) layer cannot load without it")
    tensors = GPTQTensors(
        qweight=store.get(f"{prefix}.qweight"),
        qzeros=store.get(f"{prefix}.qzeros"),
        scales=store.get(f"{prefix}.scales"),
        g_idx=g_idx if g_idx is not None else torch.arange(in_features, dtype=torch.int32) // group,
        bias=store.get_optional(f"{prefix}.bias"),
    )
    expected = {
        "qweight": (in_features // per, out_features),
        "qzeros": (in_features // group, out_features // per),
        "scales": (in_features // group, out_features),
        "g_idx": (in_features,),
    }
    check_shapes(prefix, vars(tensors), expected,
                 f"a {quant.bits}-bit group-{quant.group_size} layer of {in_features}->{out_features}")
    check_g_idx(prefix, tensors.g_idx, in_features // group)
    return tensors
