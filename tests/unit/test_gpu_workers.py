"""``xwinbot worker --gpus``: one child per GPU, each with its own CUDA_VISIBLE_DEVICES and metrics port; signals
stop them all; a child that dies is restarted. On CPU: the children are a stand-in script that records what it
was given, and the GPUs are the device list handed to the supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.paths import REPO
from worker.gpu_workers import GpuWorkers, choose_gpus

STAND_IN = """\
import os, signal, sys, time
from pathlib import Path
record = Path(sys.argv[1]) / f"{os.getpid()}.txt"
def stop(number, _frame):
    with record.open("a") as out:
        out.write(f"signal {number}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
record.write_text(f"{os.environ['CUDA_VISIBLE_DEVICES']} {os.environ['XWINBOT_METRICS_PORT']}\\n")
while True:
    time.sleep(0.05)
"""


def test_choose_gpus():
    assert choose_gpus("all", 4) == ["0", "1", "2", "3"]
    assert choose_gpus("2", 4) == ["0", "1"]
    assert choose_gpus("0,2,3", 4) == ["0", "2", "3"]
    assert choose_gpus("1", 1) == ["0"]
    # indices count the GPUs this process sees, whatever CUDA_VISIBLE_DEVICES names them
    assert choose_gpus("all", 2, visible="4,5") == ["4", "5"]
    assert choose_gpus("1", 2, visible="GPU-aaa,GPU-bbb") == ["GPU-aaa"]
    assert choose_gpus("1,0", 2, visible="4,5") == ["5", "4"]
    for bad in ("5", "0", "0,0", "0,4", "x", "-1"):
        with pytest.raises(ValueError, match="--gpus"):
            choose_gpus(bad, 4)


def test_no_gpu_is_one_clear_line():
    with pytest.raises(ValueError, match="no GPU is visible"):
        choose_gpus("all", 0)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "XWINBOT_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = subprocess.run([sys.executable, "-m", "worker.cli", "worker", "--gpus", "all"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "xwinbot: --gpus all: no GPU is visible (torch sees none; CUDA_VISIBLE_DEVICES=); run `xwinbot worker` "
        "without --gpus for one CPU worker"]


def _records(folder: Path) -> dict[int, list[str]]:
    out = {}
    for path in folder.glob("*.txt"):
        lines = path.read_text().splitlines()
        if lines:
            out[int(path.stem)] = lines
    return out


def _wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT])
def test_each_child_gets_its_own_gpu_restarts_and_stops_on_signal(tmp_path, stop_with):
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    records = tmp_path / "records"
    records.mkdir()
    parent_code = (
        "import sys; from worker.gpu_workers import GpuWorkers; "
        f"sys.exit(GpuWorkers(['0', '2', '3'], [sys.executable, {str(tmp_path / 'stand_in.py')!r}, "
        f"{str(records)!r}], metrics_port=9500, backoff_s=(0.1, 1.0)).run(poll_s=0.05))")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        first = _wait_for(lambda: (found := _records(records)) and len(found) == 3 and found)
        assert sorted(lines[0] for lines in first.values()) == ["0 9500", "2 9501", "3 9502"]

        # a child killed outright comes back on the same GPU, with the same port
        victim, lines = next((pid, lines) for pid, lines in first.items() if lines[0] == "2 9501")
        os.kill(victim, signal.SIGKILL)
        after = _wait_for(lambda: (found := _records(records)) and len(found) == 4 and found)
        (new_pid,) = set(after) - set(first)
        assert after[new_pid][0] == "2 9501"

        parent.send_signal(stop_with)
        assert parent.wait(timeout=30) == 0
        final = _records(records)
        alive = set(final) - {victim}
        assert {pid: final[pid][1:] for pid in alive} == {pid: [f"signal {int(stop_with)}"] for pid in alive}
        for pid in alive:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert "3 workers, one per GPU (0, 2, 3)" in parent.stdout.read()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in _records(records):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_child_that_keeps_dying_is_restarted_with_growing_backoff():
    workers = GpuWorkers(["0"], [sys.executable, "-c", "import sys; sys.exit(3)"], backoff_s=(0.05, 0.2))
    runner = threading.Thread(target=workers.run, kwargs={"poll_s": 0.02, "handle_signals": False})
    runner.start()
    try:
        _wait_for(lambda: workers.restarts[0] >= 4)
    finally:
        workers.stop()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert 0.1 <= workers.backoff[0] <= 0.2, "doubled from 0.05 up to the cap (jittered: half to all of it)"


def test_restart_waits_of_children_that_died_together_are_spread_and_bounded():
    workers = GpuWorkers([str(i) for i in range(8)], backoff_s=(1.0, 60.0), env={})
    for deaths, nominal in ((1, 1.0), (3, 4.0), (10, 60.0)):
        waits = [workers.restart_backoff.compute(deaths) for _ in workers.devices]
        assert all(nominal / 2 <= w <= nominal for w in waits)
        assert len(set(waits)) == len(waits), "no two children restart at the same moment"


def test_children_without_metrics_keep_them_off():
    workers = GpuWorkers(["0", "1"], metrics_port=0, env={"PATH": "/bin"})
    assert [workers.child_env(i)["XWINBOT_METRICS_PORT"] for i in (0, 1)] == ["0", "0"]
    assert [workers.child_env(i)["CUDA_VISIBLE_DEVICES"] for i in (0, 1)] == ["0", "1"]
