"""Broken or unsupported checkpoints fail with a CheckpointError that names the file or tensor at fault."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from worker.errors import CheckpointError, UnsupportedCheckpoint
from worker.model.loader import load_model


def drop_tensor(ckpt, name: str, *, from_index: bool = True) -> None:
    """Rewrite the shard holding ``name`` without it (and, if sharded, drop it from the index too)."""
    file = ckpt.path / ckpt.weight_map[name]
    tensors = load_file(str(file))
    del tensors[name]
    save_file(tensors, str(file), metadata={"format": "pt"})
    index = ckpt.path / "model.safetensors.index.json"
    if from_index and index.exists():
        data = json.loads(index.read_text())
        del data["weight_map"][name]
        index.write_text(json.dumps(data))


def edit_json(path, update) -> None:
    data = json.loads(path.read_text())
    update(data)
    path.write_text(json.dumps(data))


def test_missing_config_json(gptq_checkpoint):
    ckpt = gptq_checkpoint()
    (ckpt.path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_model(ckpt.path, device="cpu")


def test_missing_shard_is_named(gptq_checkpoint):
    ckpt = gptq_checkpoint(shards=3)
    (ckpt.path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00003\.safetensors"):
        load_model(ckpt.path, device="cpu")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
@pytest.mark.parametrize("shards", [1, 3])
def test_corrupt_safetensors_is_named(gptq_checkpoint, damage, shards):
    ckpt = gptq_checkpoint(shards=shards)
    name = "model.safetensors" if shards == 1 else "model-00003-of-00003.safetensors"
    file = ckpt.path / name
    data = file.read_bytes()
    if damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        file.write_bytes(b"this is not a safetensors file\x00\xff" * 64)
    else:
        file.write_bytes(b"")
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_model(ckpt.path, device="cpu")


@pytest.mark.parametrize("tensor", [
    "model.layers.0.mlp.up_proj.scales",
    "model.layers.1.self_attn.k_proj.qzeros",
    "model.layers.0.self_attn.o_proj.qweight",
    "model.norm.weight",
    "lm_head.weight",
])
@pytest.mark.parametrize("shards", [1, 3])
def test_missing_tensor_is_named(gptq_checkpoint, tensor, shards):
    ckpt = gptq_checkpoint(shards=shards)
    drop_tensor(ckpt, tensor)
    # A layer without its qweight looks like a plain Linear whose .weight is missing: either name will do.
    expected = tensor.removesuffix(".qweight") if tensor.endswith(".qweight") else tensor
    with pytest.raises(CheckpointError, match=expected.replace(".", r"\.")):
        load_model(ckpt.path, device="cpu")


def test_tensor_listed_in_index_but_missing_from_shard(gptq_checkpoint):
    ckpt = gptq_checkpoint(shards=3)
    drop_tensor(ckpt, "model.layers.0.mlp.up_proj.scales", from_index=False)
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.up_proj\.scales"):
        load_model(ckpt.path, device="cpu")


def test_act_order_checkpoint_without_g_idx_is_refused(gptq_checkpoint):
    """With desc_act the group of each channel lives only in g_idx: guessing k // G would be silently wrong."""
    ckpt = gptq_checkpoint(desc_act=True)
    drop_tensor(ckpt, "model.layers.0.mlp.down_proj.g_idx")
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.down_proj\.g_idx"):
        load_model(ckpt.path, device="cpu")


def test_config_disagreeing_with_tensor_shapes(gptq_checkpoint):
    ckpt = gptq_checkpoint(group_size=32)
    edit_json(ckpt.path / "quantize_config.json", lambda d: d.update(group_size=64))
    with pytest.raises(CheckpointError, match=r"model\.layers\.\d+\.\w+\.\w+_proj\.(scales|qzeros)"):
        load_model(ckpt.path, device="cpu")


@pytest.mark.parametrize("config_style", ["quantize_config", "config_json"])
def test_3bit_is_unsupported(gptq_checkpoint, config_style):
    ckpt = gptq_checkpoint(bits=3, config_style=config_style)
    with pytest.raises(UnsupportedCheckpoint, match=r"3-bit|bits"):
        load_model(ckpt.path, device="cpu")


def test_awq_gemv_is_unsupported(gptq_checkpoint):
    ckpt = gptq_checkpoint(config_style="config_json")
    edit_json(ckpt.path / "config.json", lambda d: d["quantization_config"].update(
        quant_method="awq", version="gemv", zero_point=True))
    with pytest.raises(UnsupportedCheckpoint, match=r"(?i)awq.*gemv"):
        load_model(ckpt.path, device="cpu")


def test_no_quantization_settings_at_all(gptq_checkpoint):
    ckpt = gptq_checkpoint(config_style="quantize_config")
    (ckpt.path / "quantize_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"quantize_config\.json"):
        load_model(ckpt.path, device="cpu")


@pytest.mark.parametrize("where", ["/nonexistent/dir", "tmp"])
def test_nonexistent_local_path(tmp_path, monkeypatch, where):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("a local path must never turn into a Hub download")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    source = "/nonexistent/dir" if where == "/nonexistent/dir" else str(tmp_path / "no-such-model")
    with pytest.raises(CheckpointError, match="no-such-model|nonexistent"):
        load_model(source, device="cpu")
