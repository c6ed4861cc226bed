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

