"""Where every benchmark writes its result JSON, stamped with what produced it.

``write_result("gpu_inference", report)`` writes ``$OUT/gpu_inference.json`` (nothing when ``OUT`` is unset, as
before) with these keys first, then the report's own:

- ``commit``: ``$XWINBOT_COMMIT`` when set, else ``git rev-parse HEAD`` plus ``-dirty`` when tracked files differ
  from it (as ``git describe --dirty`` counts), else ``"unknown"``. Set it for runs on a copy of the tree (the GPU
  machine's): seen 2026-12-04, that copy's ``.git`` answered the commit before the checkout's HEAD, so there
  ``XWINBOT_COMMIT=$(git rev-parse HEAD)[-dirty]`` has to come from the checkout;
- ``command``: the command as run, e.g. ``python -m benchmarks.speed.gpu_inference --shape tiny``;
- ``gpu``: ``torch.cuda.get_device_name()``, or ``"cpu"``;
- ``python``, ``torch``, ``triton``, ``transformers``: versions (``None`` where one is not installed);
- ``date``: when the file was written (UTC, ISO 8601).
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root: where ``python -m benchmarks.…`` runs from


def commit() -> str:
    if os.environ.get("XWINBOT_COMMIT"):
        return os.environ["XWINBOT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=20)
        if head.returncode == 0 and head.stdout.strip():
            changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                     capture_output=True, text=True, timeout=60)
            dirty = changes.returncode != 0 or bool(changes.stdout.strip())
            return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):  # no git installed, or it hung
        pass
    return "unknown"


def command() -> str:
    """``sys.argv`` as typed: ``python -m package.module args`` for a module run, else ``python path args``."""
    python = Path(sys.executable).name or "python"
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return shlex.join([python, "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]])
    return shlex.join([python, *sys.argv])


def version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or broken: the report still gets written
        return None


def gpu() -> str:
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:
        return "cpu"


def provenance() -> dict:
    return dict(
        commit=commit(), command=command(), gpu=gpu(), python=sys.version.split()[0], torch=version("torch"),
        triton=version("triton"), transformers=version("transformers"),
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def write_result(name: str, report: dict, out: str | Path | None = None, indent: int = 2) -> Path | None:
    """``report`` with :func:`provenance` into ``out/name.json`` (``out`` defaults to ``$OUT``; neither: nothing
    is written). The report's own keys come after and win where they share a name (its "torch", say)."""
    out = out or os.environ.get("OUT")
    if not out:
        return None
    path = Path(out, f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**provenance(), **report}, indent=indent))
    print(f"result: {path}", flush=True)
    return path
