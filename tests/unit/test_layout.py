"""The shape of the code a newcomer relies on: imports point one way (adapter → queue → worker → poster), the
adapters and the queue contract load without the model's libraries, and worker/'s root stays small."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO

PACKAGES = ("bot", "worker")
CLI_ENTRY = "worker.cli"  # wires the processes together: the one worker module that may start the adapters
MAX_WORKER_ROOT_MODULES = 12
# The model's stack, lowest first: each package may import those below it, never one above (as gpt-fast's
# generate → model → torch), so a kernel can be read and tested without the runtime that calls it.
MODEL_STACK = ("worker.kernels", "worker.model", "worker.inference")
BOT_MAY_IMPORT = ("worker.queue", "worker.settings", "worker.posters", "worker.ops", "worker.errors", "worker.logs",
                  "worker.feedback")


def module_files() -> dict[str, object]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(path, known: set[str]) -> set[str]:
    """Every module of ours that ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in candidates if name in known)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}


def test_no_import_cycles(graph):
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_only_the_cli_entry_imports_the_adapters(graph):
    reaching_into_bot = sorted(m for m, targets in graph.items()
                               if m.startswith("worker") and m != CLI_ENTRY
                               and any(t.startswith("bot") for t in targets))
    assert reaching_into_bot == []


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_model_stack_imports_only_downward(graph):
    upward = sorted((module, target) for module, targets in graph.items() for target in targets
                    for lower, higher in itertools.combinations(MODEL_STACK, 2)
                    if in_package(module, lower) and in_package(target, higher))
    assert upward == []


def test_adapters_use_only_the_torch_free_parts_of_worker(graph):
    outside = sorted((m, t) for m, targets in graph.items() if m.startswith("bot") for t in targets
                     if t.startswith("worker") and not t.startswith(BOT_MAY_IMPORT))
    assert outside == []


def test_worker_root_is_small():
    root_modules = sorted(p.name for p in (REPO / "worker").glob("*.py"))
    assert len(root_modules) <= MAX_WORKER_ROOT_MODULES, root_modules


def test_adapters_and_queue_load_without_torch_or_transformers():
    code = ("import sys, bot.slack.app, bot.discord.client, bot.console, bot.launch, worker.queue.job, "
            "worker.queue.job_queue, worker.queue.rq_workers, worker.queue.reply_index, worker.queue.positions, "
            "worker.posters.registry; print(sorted({'torch', 'transformers', 'triton'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
