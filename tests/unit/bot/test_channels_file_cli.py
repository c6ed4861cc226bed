"""A bad channels file (XWINBOT_CHANNELS_FILE pointing at invalid YAML) as ``xwinbot discord`` and ``xwinbot up``
show it: one message naming the file and the problem, exit code 1, no traceback, nothing left running (``up``
used to log the error in the Discord thread's traceback and run on without Discord)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("command", ["discord", "up"])
def test_a_bad_channels_file_is_one_clear_message_and_exit_1(command, tmp_path, queue_name):
    bad = tmp_path / "channels.yaml"
    bad.write_text('discord:\n  channels:\n    "1": [oops\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("XWINBOT_")}
    env.update(XWINBOT_CHANNELS_FILE=str(bad), XWINBOT_DISCORD_TOKEN="MTAwMA.fake.token", XWINBOT_QUEUE_NAME=queue_name,
               XWINBOT_DISCORD_API_URL="http://127.0.0.1:9/api/v10", XWINBOT_HEALTH_PORT="0",
               XWINBOT_REDIS_URL="redis://127.0.0.1:6379/0")
    done = subprocess.run([sys.executable, "-m", "worker.cli", command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"xwinbot: XWINBOT_CHANNELS_FILE={bad}: not valid YAML"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "worker is ready" not in done.stdout  # `up` stops before starting the worker
