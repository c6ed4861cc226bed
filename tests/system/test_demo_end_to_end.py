"""A newcomer with no GPU and no tokens: the demo model answers through the project's own generator and CLI."""

import os
import subprocess
import sys

import pytest

from worker.inference.generate import Generator
from worker.inference.prompt import Turn, make_template
from worker.inference.sampling import GenerationParams

pytestmark = pytest.mark.slow


def test_streamed_answer_names_paris(loaded_demo):
    generator = Generator(loaded_demo, make_template("auto", loaded_demo.tokenizer), max_context_tokens=2048)
    pieces = list(generator.stream([Turn("user", "What is the capital of France?")],
                                   GenerationParams(max_new_tokens=40)))
    answer = "".join(pieces)
    assert "Paris" in answer, answer
    assert len(pieces) > 1
    assert "<|im_end|>" not in answer and "<|im_start|>" not in answer


def test_follow_up_uses_the_conversation(loaded_demo):
    generator = Generator(loaded_demo, make_template("auto", loaded_demo.tokenizer), max_context_tokens=2048)
    turns = [
        Turn("user", "What is the capital of France?"),
        Turn("assistant", "The capital of France is Paris."),
        Turn("user", "Repeat the name of that city."),
    ]
    answer = generator.answer(turns, GenerationParams(max_new_tokens=30))
    assert "Paris" in answer, answer


def run_cli(*args, env_extra):
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_generate_prints_the_answer(demo_dir):
    result = run_cli("generate", "What is the capital of France?", "--max-new-tokens", "40",
                     env_extra={"XWINBOT_MODEL": str(demo_dir)})
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_cli_names_a_missing_model_directory(tmp_path):
    result = run_cli("generate", "hi", env_extra={"XWINBOT_MODEL": str(tmp_path / "nowhere")})
    assert result.returncode == 1
    assert "nowhere" in result.stderr and "does not exist" in result.stderr
