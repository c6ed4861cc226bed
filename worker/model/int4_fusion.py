"""Fewer, larger int4 matmuls per decoder layer, decided once at load time.

- q/k/v read the same input, and so do gate/up: when they share an input order (AutoGPTQ's act-order
  permutation comes from that shared input, so real checkpoints do), they are packed as one layer
  (``self_attn.qkv_proj``, ``mlp.gate_up_proj``) and the separate projections become views of it.
- down_proj's act-order gather is folded into gate/up: their output features are reordered by
  down_proj's permutation, so the product act(gate) * up arrives already in down_proj's order.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from worker.model.tinygemm_linear import Int4Codes, TinygemmInt4Linear, same_perm

FUSIONS = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


def fold_down_proj_order(codes: dict[str, Int4Codes]) -> None:
    """For every MLP whose gate/up/down are all int4: move down_proj's input gather into gate/up."""
    for prefix in [p for p in codes if p.endswith(".down_proj")]:
        parent = prefix.removesuffix(".down_proj")
        gate, up, down = codes.get(f"{parent}.gate_proj"), codes.get(f"{parent}.up_proj"), codes[prefix]
        if gate is None or up is None or down.perm is None:
            continue
        codes[f"{parent}.gate_proj"] = gate.reorder_outputs(down.perm)
        codes[f"{parent}.up_proj"] = up.reorder_outputs(down.perm)
        codes[prefix] = dataclasses.replace(down, perm=None)


def build_int4_modules(
    codes: dict[str, Int4Codes], dtype, linear_type: type = TinygemmInt4Linear
) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """(replacement for each quantized prefix, fused layers by their new prefix); ``linear_type`` is
    ``TinygemmInt4Linear`` or ``TritonInt4Linear`` (both build from codes and slice their outputs)."""
    fold_down_proj_order(codes)
    modules: dict[str, nn.Module] = {}
    fused_layers: dict[str, nn.Module] = {}
    for fused_name, members in FUSIONS.items():
        for parent in {p.rsplit(".", 1)[0] for p in codes if p.endswith("." + members[0])}:
            parts = [codes.get(f"{parent}.{m}") for m in members]
            if any(p is None for p in parts) or not all(same_perm(p.perm, parts[0].perm) for p in parts):
                continue
            fused = linear_type.from_codes(Int4Codes.concat(parts), dtype)
            try:
                start = 0
                for member, part in zip(members, parts):
                    modules[f"{parent}.{member}"] = fused.output_slice(start, start + part.out_features)
                    start += part.out_features
            except ValueError:  # outputs not aligned to the packed layout's row blocks: keep them separate
                for member in members:
                    modules.pop(f"{parent}.{member}", None)
                continue
            fused_layers[f"{parent}.{fused_name}"] = fused
    for prefix, c in codes.items():
        if prefix not in modules:
            modules[prefix] = linear_type.from_codes(c, dtype)
    return modules, fused_layers
