"""Finding a checkpoint's files: a local directory, or a Hugging Face repo downloaded once into the HF cache."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from worker.errors import CheckpointError

HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"]


def resolve_checkpoint_dir(source: str | Path, revision: str = "main") -> Path:
    """A local directory as it is; otherwise ``owner/name`` is fetched from the Hub (with a progress bar)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    looks_like_repo_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_repo_id:
        raise CheckpointError(f"model directory {path} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=text, revision=revision, allow_patterns=HUB_FILE_PATTERNS))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        raise CheckpointError(f"could not download {text}@{revision} from the Hugging Face Hub: {err}") from err


def read_json(path: Path):
    """A checkpoint's JSON file, or CheckpointError saying which file could not be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err


def read_config_json(checkpoint_dir: Path) -> dict:
    path = checkpoint_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: every checkpoint needs its config.json")
    return read_json(path)


def safetensors_shards(checkpoint_dir: Path) -> list[Path]:
    """The shards named by ``*.safetensors.index.json``, else every ``*.safetensors`` file in the directory."""
    indexes = sorted(checkpoint_dir.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"{indexes[0]} is not a valid safetensors index: {err}") from err
        shards = [checkpoint_dir / name for name in sorted(set(weight_map.values()))]
        for shard in shards:
            if not shard.is_file():
                raise CheckpointError(f"{shard} is missing (listed in {indexes[0].name})")
        return shards
    shards = sorted(checkpoint_dir.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{checkpoint_dir} holds no .safetensors weights")
    return shards


class TensorStore:
    """Every tensor of a checkpoint by name, read lazily from its shard."""

    def __init__(self, shards: list[Path]):
        self._handles = {}
        self._file_of: dict[str, Path] = {}
        for shard in shards:
            try:
                handle = safe_open(str(shard), framework="pt")
                names = list(handle.keys())
            except (SafetensorError, OSError, ValueError) as err:
                raise CheckpointError(f"{shard} is not a readable safetensors file: {err}") from err
            self._handles[shard] = handle
            for name in names:
                self._file_of[name] = shard

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def names(self) -> list[str]:
        return list(self._file_of)

    def get(self, name: str) -> torch.Tensor:
        shard = self._file_of.get(name)
        if shard is None:
            raise CheckpointError(f"tensor {name!r} is missing from the checkpoint's safetensors files")
        try:
            return self._handles[shard].get_tensor(name)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"tensor {name!r} in {shard} could not be read: {err}") from err

    def get_optional(self, name: str) -> torch.Tensor | None:
        return self.get(name) if name in self else None
