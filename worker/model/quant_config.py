"""What a quantized checkpoint says about its own quantization, read from its config files.

Three producers' settings are understood (their tensor layouts: ``worker.model.formats``):
- GPTQ (AutoGPTQ, GPTQModel): ``quant_method: gptq``, ``bits``, ``group_size``, ``desc_act``, ``sym`` and the
  layout version in ``checkpoint_format`` (GPTQModel's newer key: ``format``): ``gptq`` (v1, zeros stored minus
  one) or ``gptq_v2`` (zeros as they are).
- AWQ (AutoAWQ): ``quant_method: awq``, ``bits`` (``w_bit``), ``group_size`` (``q_group_size``), ``zero_point``,
  ``version`` (only ``gemm`` is a layout we read).
- compressed-tensors (llm-compressor): ``quant_method: compressed-tensors``, ``format: pack-quantized`` and
  ``config_groups.*.weights`` = {num_bits, type, symmetric, strategy (group | channel), group_size, actorder}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.errors import CheckpointError, UnsupportedCheckpoint
from worker.model.checkpoint import read_json

INT4_KERNEL_GROUP_SIZES = (32, 64, 128, 256)
DEQUANTIZE_BITS = (2, 4, 8)
GPTQ_FORMATS = ("gptq", "gptq_v2")
AWQ_VERSIONS = ("gemm",)
COMPRESSED_TENSORS_FORMATS = ("pack-quantized",)
QUANT_METHODS = ("gptq", "awq", "compressed-tensors")


@dataclass(frozen=True)
class QuantConfig:
    bits: int
    group_size: int  # -1: one group spanning all input channels
    desc_act: bool
    sym: bool
    zero_offset: int  # 1 for the AutoGPTQ "v1" format (zeros stored minus one), 0 for "v2" (and AWQ, c-t)
    method: str = "gptq"  # gptq | awq | compressed-tensors
    checkpoint_format: str = "gptq"  # gptq | gptq_v2 | gemm (AWQ) | pack-quantized (compressed-tensors)

    def group_for(self, in_features: int) -> int:
        """Input channels per group for a layer (group_size -1 means one group over all of them)."""
        return self.group_size if self.group_size > 0 else in_features

    @property
    def int4_kernel_ok(self) -> bool:
        """Whether PyTorch's int4 kernels can serve this layout (else: dequantize to a plain Linear)."""
        return self.bits == 4 and self.group_size in INT4_KERNEL_GROUP_SIZES

    @property
    def description(self) -> str:
        group = "channel-wise" if self.group_size <= 0 else f"group {self.group_size}"
        return (f"{self.method} ({self.checkpoint_format}) {self.bits}-bit {group}, "
                f"{'symmetric' if self.sym else 'asymmetric'}{', act-order' if self.desc_act else ''}")


def read_quant_config(checkpoint_dir: Path, config_json: dict) -> QuantConfig:
    """quantize_config.json wins; else the ``quantization_config`` entry of config.json; else AutoAWQ's older
    quant_config.json."""
    path = checkpoint_dir / "quantize_config.json"
    awq_path = checkpoint_dir / "quant_config.json"
    if path.is_file():
        raw = read_json(path)
        source = "quantize_config.json"
    elif isinstance(config_json.get("quantization_config"), dict):
        raw = config_json["quantization_config"]
        source = "config.json quantization_config"
    elif awq_path.is_file():
        raw = {"quant_method": "awq", **read_json(awq_path)}
        source = "quant_config.json"
    else:
        raise CheckpointError(
            f"{checkpoint_dir} holds no quantize_config.json and its config.json has no quantization_config: "
            "this is not a quantized checkpoint (GPTQ, AWQ or compressed-tensors)"
        )
    return parse_quant_config(raw, source)


def parse_quant_config(raw: dict, source: str) -> QuantConfig:
    method = str(raw.get("quant_method", "gptq")).lower()
    if method == "gptq":
        return parse_gptq(raw, source)
    if method == "awq":
        return parse_awq(raw, source)
    if method == "compressed-tensors":
        return parse_compressed_tensors(raw, source)
    raise UnsupportedCheckpoint(
        f"{source}: quant_method {method!r} is not supported (supported: {', '.join(QUANT_METHODS)})")


def _int(raw: dict, keys: tuple[str, ...], default, source: str) -> int:
    for key in keys:
        if key in raw:
            try:
                return int(raw[key])
            except (TypeError, ValueError) as err:
                raise CheckpointError(f"{source}: {key!r} must be an integer, not {raw[key]!r}") from err
    if default is None:
        raise CheckpointError(f"{source}: {' or '.join(repr(k) for k in keys)} is missing")
    return default


def parse_gptq(raw: dict, source: str) -> QuantConfig:
    bits = _int(raw, ("bits",), None, source)
    group_size = _int(raw, ("group_size",), -1, source)
    if bits not in DEQUANTIZE_BITS:
        raise UnsupportedCheckpoint(
            f"{source}: {bits}-bit GPTQ is not supported (supported: 4-bit on the int4 kernels, 2- and 8-bit "
            "dequantized to plain weights)"
        )
    fmt = str(raw.get("checkpoint_format", raw.get("format", "gptq"))).lower()
    if fmt not in GPTQ_FORMATS:
        raise UnsupportedCheckpoint(
            f"{source}: GPTQ checkpoint_format {fmt!r} is not supported (supported: {', '.join(GPTQ_FORMATS)})")
    return QuantConfig(
        bits=bits,
        group_size=group_size,
        desc_act=bool(raw.get("desc_act", False)),
        sym=bool(raw.get("sym", True)),
        zero_offset=0 if fmt == "gptq_v2" else 1,
        method="gptq",
        checkpoint_format=fmt,
    )


def parse_awq(raw: dict, source: str) -> QuantConfig:
    bits = _int(raw, ("bits", "w_bit"), None, source)
    group_size = _int(raw, ("group_size", "q_group_size"), -1, source)
    version = str(raw.get("version", "gemm")).lower()
    if bits != 4:
        raise UnsupportedCheckpoint(f"{source}: {bits}-bit AWQ is not supported (only 4-bit AWQ GEMM)")
    if version not in AWQ_VERSIONS:
        raise UnsupportedCheckpoint(
            f"{source}: AWQ version {version!r} is not supported (only {', '.join(AWQ_VERSIONS)})")
    if not raw.get("zero_point", True):
        raise UnsupportedCheckpoint(f"{source}: AWQ with zero_point false is not supported (AutoAWQ's GEMM "
                                    "layout always stores zero points)")
    return QuantConfig(bits=4, group_size=group_size, desc_act=False, sym=False, zero_offset=0, method="awq",
                       checkpoint_format=version)


def parse_compressed_tensors(raw: dict, source: str) -> QuantConfig:
    fmt = str(raw.get("format", "")).lower()
    if fmt not in COMPRESSED_TENSORS_FORMATS:
        raise UnsupportedCheckpoint(
            f"{source}: compressed-tensors format {fmt!r} is not supported (only pack-quantized W4A16)")
    groups = raw.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise CheckpointError(f"{source}: compressed-tensors config has no config_groups")
    schemes = []
    for name, group in groups.items():
        if not isinstance(group, dict) or not isinstance(group.get("weights"), dict):
            raise CheckpointError(f"{source}: config_groups.{name} has no weights entry")
        if group.get("input_activations"):
            raise UnsupportedCheckpoint(
                f"{source}: config_groups.{name} quantizes input activations too; only weight-only W4A16 is "
                "supported")
        group_format = str(group.get("format") or fmt).lower()
        if group_format not in COMPRESSED_TENSORS_FORMATS:
            raise UnsupportedCheckpoint(
                f"{source}: config_groups.{name} has format {group_format!r}; only pack-quantized is supported")
        w = group["weights"]
        bits = _int(w, ("num_bits",), None, f"{source} config_groups.{name}.weights")
        kind = str(w.get("type", "int")).lower()
        strategy = str(w.get("strategy", "")).lower()
        if kind != "int" or bits != 4:
            raise UnsupportedCheckpoint(
                f"{source}: config_groups.{name}.weights is {bits}-bit {kind}; only 4-bit int (W4A16) is supported")
        if strategy not in ("group", "channel"):
            raise UnsupportedCheckpoint(
                f"{source}: config_groups.{name}.weights strategy {strategy!r} is not supported (group or channel)")
        group_size = _int(w, ("group_size",), None, source) if strategy == "group" else -1
        actorder = w.get("actorder")  # "group": a weight_g_idx is stored; "weight"/"static": groups contiguous
        schemes.append((group_size, bool(w.get("symmetric", True)), str(actorder).lower() == "group"))
    if len(set(schemes)) > 1:
        raise UnsupportedCheckpoint(f"{source}: config_groups quantize layers differently ({schemes}); one "
                                    "weight scheme for all layers is supported")
    group_size, sym, desc_act = schemes[0]
    return QuantConfig(bits=4, group_size=group_size, desc_act=desc_act, sym=sym, zero_offset=0,
                       method="compressed-tensors", checkpoint_format=fmt)
