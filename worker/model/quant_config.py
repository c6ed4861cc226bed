"""What a GPTQ checkpoint says about its own quantization, read from quantize_config.json or config.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.errors import CheckpointError, UnsupportedCheckpoint
from worker.model.checkpoint import read_json

INT4_KERNEL_GROUP_SIZES = (32, 64, 128, 256)
DEQUANTIZE_BITS = (2, 4, 8)


@dataclass(frozen=True)
class QuantConfig:
    bits: int
    group_size: int  # -1: one group spanning all input channels
    desc_act: bool
    sym: bool
    zero_offset: int  # 1 for the AutoGPTQ "v1" format (zeros stored minus one), 0 for "v2"

    def group_for(self, in_features: int) -> int:
        """Input channels per group for a layer (group_size -1 means one group over all of them)."""
        return self.group_size if self.group_size > 0 else in_features

    @property
    def int4_kernel_ok(self) -> bool:
        """Whether PyTorch's int4 kernels can serve this layout (else: dequantize to a plain Linear)."""
        return self.bits == 4 and self.group_size in INT4_KERNEL_GROUP_SIZES


def read_quant_config(checkpoint_dir: Path, config_json: dict) -> QuantConfig:
    """quantize_config.json wins; else the ``quantization_config`` entry of config.json."""
    path = checkpoint_dir / "quantize_config.json"
    if path.is_file():
        raw = read_json(path)
        source = "quantize_config.json"
    elif isinstance(config_json.get("quantization_config"), dict):
        raw = config_json["quantization_config"]
        source = "config.json quantization_config"
    else:
        raise CheckpointError(
            f"{checkpoint_dir} holds no quantize_config.json and its config.json has no quantization_config: "
            "this is not a GPTQ checkpoint"
        )
    return parse_quant_config(raw, source)


def parse_quant_config(raw: dict, source: str) -> QuantConfig:
    method = str(raw.get("quant_method", "gptq")).lower()
    if method != "gptq":
        raise UnsupportedCheckpoint(f"{source}: quant_method {method!r} is not supported; only GPTQ checkpoints are")
    try:
        bits = int(raw["bits"])
        group_size = int(raw.get("group_size", -1))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: 'bits' and 'group_size' must be integers ({err})") from err
    if bits not in DEQUANTIZE_BITS:
        raise UnsupportedCheckpoint(
            f"{source}: {bits}-bit GPTQ is not supported (supported: 4-bit on the int4 kernels, 2- and 8-bit "
            "dequantized to plain weights)"
        )
    fmt = str(raw.get("checkpoint_format", "gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise UnsupportedCheckpoint(f"{source}: checkpoint_format {fmt!r} is not supported (gptq or gptq_v2)")
    return QuantConfig(
        bits=bits,
        group_size=group_size,
        desc_act=bool(raw.get("desc_act", False)),
        sym=bool(raw.get("sym", True)),
        zero_offset=0 if fmt == "gptq_v2" else 1,
    )
