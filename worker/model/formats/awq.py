"""AWQ checkpoints in AutoAWQ's GEMM layout (``quant_method: awq``, ``version: gemm``).

Sources read: casper-hansen/AutoAWQ ``awq/modules/linear/gemm.py`` (``WQLinear_GEMM.from_linear``, the packing)
and ``awq/utils/packing_utils.py`` (``AWQ_ORDER``, ``AWQ_REVERSE_ORDER``, ``dequantize_gemm``). Per Linear with
K inputs, N outputs, group size G:

- ``qweight`` int32 [K, N/8]: packed along the OUTPUT dimension; nibble i (bits 4i..4i+3) of word [k, c] holds
  the code of output column ``8c + AWQ_ORDER[i]``, AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7].
- ``qzeros`` int32 [K/G, N/8]: the zero codes, packed the same way (stored as they are, no minus one).
- ``scales`` fp16 [K/G, N]; optional ``bias`` fp16 [N]; no g_idx (groups are contiguous inputs).
- W[n, k] = scales[k // G, n] * (q[k, n] - z[k // G, n]).

Codes are unpacked, put back in column order, and repacked into the GPTQ layout with true zeros (v2 convention).
"""

from __future__ import annotations

import torch
from torch import nn

from worker.model.checkpoint import TensorStore
from worker.model.formats.common import check_shapes, reverse_columns
from worker.model.gptq_layout import GPTQTensors, pack_columns, pack_rows, unpack_columns
from worker.model.quant_config import QuantConfig

WEIGHT_SUFFIX = ".qweight"
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def read(store: TensorStore, prefix: str, linear: nn.Linear, quant: QuantConfig) -> GPTQTensors:
    in_features, out_features = linear.in_features, linear.out_features
    group = quant.group_for(in_features)
    stored = {name: store.get(f"{prefix}.{name}") for name in ("qweight", "qzeros", "scales")}
    check_shapes(prefix, stored, {
        "qweight": (in_features, out_features // 8),
        "qzeros": (in_features // group, out_features // 8),
        "scales": (in_features // group, out_features),
    }, f"a 4-bit AWQ GEMM group-{quant.group_size} layer of {in_features}->{out_features}")
    q = reverse_columns(unpack_columns(stored["qweight"], 4), AWQ_ORDER)  # [K, N]
    z = reverse_columns(unpack_columns(stored["qzeros"], 4), AWQ_ORDER)  # [K/G, N]
    return GPTQTensors(
        qweight=pack_rows(q, 4),
        qzeros=pack_columns(z, 4),
        scales=stored["scales"],
        g_idx=torch.arange(in_features, dtype=torch.int32) // group,
        bias=store.get_optional(f"{prefix}.bias"),
    )
