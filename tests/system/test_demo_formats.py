"""The demo model (SmolLM2-135M-Instruct) written as AWQ GEMM and as compressed-tensors pack-quantized loads and
answers through ``xwinbot generate`` (``python -m worker.cli generate``), on CPU."""

import os
import subprocess
import sys

import pytest

from worker.model.demo_model import build_demo_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fmt", ["awq", "compressed-tensors"])
def test_cli_generate_answers_from_each_format(tmp_path_factory, fmt):
    path = build_demo_model(tmp_path_factory.mktemp(f"demo-{fmt}") / f"smollm2-{fmt}", format=fmt)
    assert not (path / "quantize_config.json").exists()
    env = {**os.environ, "XWINBOT_MODEL": str(path), "XWINBOT_DEVICE": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "generate", "What is the capital of France?", "--max-new-tokens", "40"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout, result.stdout
