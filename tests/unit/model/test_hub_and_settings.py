"""The Hugging Face download path (exercised offline against a local HF cache) and the settings object."""

import shutil

import pytest

from worker.errors import CheckpointError
from worker.inference.model_setup import generation_defaults
from worker.model.loader import load_model
from worker.settings import Settings

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_repo_id_loads_from_the_hub_cache(offline_hub, gptq_checkpoint):
    """``owner/name`` goes through huggingface_hub.snapshot_download; a cached snapshot needs no network."""
    ckpt = gptq_checkpoint(group_size=32)
    repo = offline_hub / "models--acme--tiny-gptq"
    shutil.copytree(ckpt.path, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    loaded = load_model("acme/tiny-gptq", revision="main", device="cpu")
    assert loaded.path == repo / "snapshots" / COMMIT
    assert loaded.quant.bits == 4


def test_repo_not_downloadable_gets_a_clear_error(offline_hub):
    with pytest.raises(CheckpointError, match="could not download acme/missing@main"):
        load_model("acme/missing", device="cpu")


def test_settings_come_from_environment_and_dotenv(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("XWINBOT_TEMPLATE=alpaca\nXWINBOT_TOP_K=10\n")
    monkeypatch.setenv("XWINBOT_TEMPERATURE", "0.7")
    settings = Settings()
    assert settings.template == "alpaca" and settings.top_k == 10 and settings.temperature == 0.7
    params = generation_defaults(settings)
    assert (params.temperature, params.top_p, params.top_k, params.max_new_tokens) == (0.7, 0.95, 10, 512)


def test_seed_defaults():
    params = generation_defaults(Settings(_env_file=None))
    assert (params.temperature, params.top_p, params.top_k, params.max_new_tokens) == (0.01, 0.95, 40, 512)


def test_out_of_range_setting_is_refused(monkeypatch):
    monkeypatch.setenv("XWINBOT_TEMPERATURE", "-1")
    with pytest.raises(ValueError, match="temperature"):
        Settings(_env_file=None)
