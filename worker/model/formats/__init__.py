"""One reader per checkpoint producer; each turns a quantized Linear's stored tensors into the one form our
int4 path consumes: ``GPTQTensors`` in the GPTQ row-packed layout (``worker.model.gptq_layout``), which
``Int4Codes`` / the dequantize fallback then read.

- ``gptq``: AutoGPTQ (v1) and GPTQModel (v2) checkpoints, read as they are stored.
- ``awq``: AutoAWQ's GEMM layout, unpacked (its interleaved nibble order undone) and repacked with true zeros.
- ``compressed_tensors``: llm-compressor's ``pack-quantized`` W4A16, unpacked and repacked the same way.

AWQ and compressed-tensors layers come back in the v2 zero convention (``QuantConfig.zero_offset`` is 0 for them).
A layer with one group over all its inputs (GPTQ ``group_size: -1``, compressed-tensors ``strategy: channel``)
comes back with that group's scale and zero repeated over groups of 128 (or 256, 64, 32) inputs: the same
weights exactly, in a group size the int4 kernels tile.
"""

from __future__ import annotations

import torch
from torch import nn

from worker.errors import CheckpointError, UnsupportedCheckpoint
from worker.model.checkpoint import TensorStore
from worker.model.formats import awq, compressed_tensors, gptq
from worker.model.gptq_layout import GPTQTensors
from worker.model.quant_config import QuantConfig

EXPANDED_GROUP_SIZES = (128, 256, 64, 32)  # for a single group over all inputs: the first that divides K


READERS = {"gptq": gptq, "awq": awq, "compressed-tensors": compressed_tensors}  # quant_method -> its reader


def _reader(quant: QuantConfig):
    if quant.method not in READERS:
        raise UnsupportedCheckpoint(f"no reader for quant_method {quant.method!r}")
    return READERS[quant.method]


def quantized_prefixes(store: TensorStore, quant: QuantConfig) -> list[str]:
    """The module names of every quantized Linear in the checkpoint (sorted)."""
    suffix = _reader(quant).WEIGHT_SUFFIX
    prefixes = sorted(name.removesuffix(suffix) for name in store.names() if name.endswith(suffix))
    if not prefixes:
        raise CheckpointError(f"the checkpoint's safetensors files hold no {suffix} tensors: not a {quant.method} "
                              "checkpoint as its config says")
    return prefixes


def read_layer(store: TensorStore, prefix: str, linear: nn.Linear, quant: QuantConfig) -> GPTQTensors:
    """The layer's tensors in the GPTQ layout (zero convention ``quant.zero_offset``), single groups expanded."""
    tensors = _reader(quant).read(store, prefix, linear, quant)
    return expand_single_group(tensors, linear.in_features)


def expand_single_group(t: GPTQTensors, in_features: int) -> GPTQTensors:
    """One group over all K inputs -> K/G groups holding the same scale and zero (exactly the same weights)."""
    if t.scales.shape[0] != 1:
        return t
    group = next((g for g in EXPANDED_GROUP_SIZES if in_features % g == 0), None)
    if group is None:
        return t
    n = in_features // group
    g_idx = torch.arange(in_features, dtype=torch.int32) // group
    return GPTQTensors(t.qweight, t.qzeros.repeat(n, 1), t.scales.repeat(n, 1), g_idx, t.bias)
