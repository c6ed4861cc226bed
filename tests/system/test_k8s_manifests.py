"""deploy/k8s/ keeps its promises: every manifest is valid against the schema of a current Kubernetes version
(kubernetes-validate ships the schemas, so this runs offline), each worker pod asks for exactly one GPU, Redis
keeps the queue on a PersistentVolumeClaim with its append-only file, the secrets come only from the Secret, and
images and commands are the compose file's."""

from __future__ import annotations

import re
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.helpers.paths import REPO

K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.34.0"
SECRET = "xwinbot-secrets"
SECRET_SHAPED = re.compile(r"TOKEN|SECRET|PASSWORD|(^|_)KEY$")


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def objects(kustomization) -> dict[tuple[str, str], dict]:
    found = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} twice"
            found[key] = doc
    return found


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))["services"]


def secret_keys() -> set[str]:
    text = (K8S / "secrets.env.example").read_text(encoding="utf-8")
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def only_container(obj: dict) -> dict:
    (container,) = pod_spec(obj)["containers"]
    return container


def workloads(objects) -> dict[str, dict]:
    return {name: obj for (kind, name), obj in objects.items() if kind in ("Deployment", "StatefulSet")}


def test_every_manifest_is_listed_and_valid(kustomization, objects):
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk, "every manifest in kustomization.yaml's resources"
    for (kind, name), obj in objects.items():
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{kind}/{name}: {'.'.join(map(str, err.path))}: {err.message}")
    assert {kind for kind, _ in objects} == {"Namespace", "ConfigMap", "Service", "StatefulSet", "Deployment"}


def test_the_validator_catches_a_wrong_manifest(objects):
    """The schemas are really there (offline) and strict: an unknown field and a wrong type are refused."""
    worker = yaml.safe_load(yaml.safe_dump(objects[("StatefulSet", "xwinbot-worker")]))
    worker["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSION, strict=True)
    worker["spec"]["replicas"] = 2
    only_container(worker)["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSION, strict=True)


def test_the_secret_is_generated_from_a_git_ignored_file(kustomization):
    (generator,) = kustomization["secretGenerator"]
    assert generator["name"] == SECRET and generator["envs"] == ["secrets.env"]
    ignored = subprocess.run(["git", "check-ignore", "-q", str(K8S / "secrets.env")], cwd=REPO)
    assert ignored.returncode == 0, "deploy/k8s/secrets.env must be git-ignored"
    assert {"REDIS_PASSWORD", "XWINBOT_SLACK_BOT_TOKEN", "XWINBOT_SLACK_APP_TOKEN", "XWINBOT_SLACK_SIGNING_SECRET",
            "XWINBOT_DISCORD_TOKEN", "HF_TOKEN"} <= secret_keys()
    # the Secret secrets.env.example would make is a valid Secret
    data = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (K8S / "secrets.env.example").read_text(), re.MULTILINE))
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
                                  "type": "Opaque", "stringData": data}, K8S_VERSION, strict=True)


def test_secrets_come_only_from_the_secret(objects):
    assert not any(kind == "Secret" for kind, _ in objects), "no Secret committed: secretGenerator makes it"
    for (_, name), obj in objects.items():
        if obj["kind"] == "ConfigMap":
            assert not [key for key in obj["data"] if SECRET_SHAPED.search(key)], name
    for name, obj in workloads(objects).items():
        container = only_container(obj)
        env = container.get("env", [])
        for item in env:
            if SECRET_SHAPED.search(item["name"]):
                ref = item["valueFrom"]["secretKeyRef"]
                assert ref["name"] == SECRET and ref["key"] in secret_keys(), (name, item["name"])
        if name == "redis":
            continue
        assert {"secretRef": {"name": SECRET}} in container["envFrom"], name
        assert {"configMapRef": {"name": "xwinbot-settings"}} in container["envFrom"], name
        names = [item["name"] for item in env]
        url = next(item for item in env if item["name"] == "XWINBOT_REDIS_URL")
        # the password is filled in from the Secret when the pod starts; $(VAR) needs VAR defined before it
        assert url["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0", name
        assert names.index("REDIS_PASSWORD") < names.index("XWINBOT_REDIS_URL"), name


def test_redis_keeps_the_queue_with_a_password(objects):
    redis = objects[("StatefulSet", "redis")]
    container = only_container(redis)
    assert container["image"] == "redis:7"
    args = " ".join(container["command"] + container["args"])
    for option in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction",
                   "--requirepass $(REDIS_PASSWORD)"):
        assert option in args
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert objects[("Service", "redis")]["spec"]["ports"][0]["port"] == 6379
    assert "ping" in container["readinessProbe"]["exec"]["command"]


def test_each_worker_pod_gets_exactly_one_gpu(objects, compose):
    worker = objects[("StatefulSet", "xwinbot-worker")]
    container = only_container(worker)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in container["resources"].get("requests", {})
    others = [name for name, obj in workloads(objects).items() if name != "xwinbot-worker"
              and "nvidia.com/gpu" in str(only_container(obj).get("resources"))]
    assert others == [], "only the workers ask for GPUs"
    assert worker["spec"]["replicas"] >= 1
    assert container["image"] == compose["worker"]["image"].split(":")[0]
    assert container["command"] == compose["worker"]["command"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["XWINBOT_DEVICE"] == "cuda" and env["XWINBOT_METRICS_PORT"] == "9400"
    (claim,) = worker["spec"]["volumeClaimTemplates"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert env["HF_HOME"].startswith(mount["mountPath"] + "/"), "the model cache is on the claim"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz", probe
        assert container[probe]["httpGet"]["port"] in (9400, "metrics"), probe
    assert {"name": "metrics", "containerPort": 9400} in container["ports"]
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= 120, "answers in progress finish on SIGTERM"


@pytest.mark.parametrize("name, port", [("slack", 9401), ("discord", 9402)])
def test_adapters_match_the_compose_file(objects, compose, name, port):
    container = only_container(objects[("Deployment", f"xwinbot-{name}")])
    assert container["image"] == compose[name]["image"].split(":")[0]
    assert container["command"] == compose[name]["command"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["XWINBOT_METRICS_PORT"] == str(port)
    assert {"name": "metrics", "containerPort": port} in container["ports"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "resources" not in container or "nvidia.com/gpu" not in str(container["resources"])


def test_the_api_is_served_on_8000(objects):
    api = objects[("Deployment", "xwinbot-api")]
    container = only_container(api)
    assert container["image"] == "xwinbot-adapter" and container["command"] == ["xwinbot", "api"]
    assert {"name": "http", "containerPort": 8000} in container["ports"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = objects[("Service", "xwinbot-api")]["spec"]
    assert service["selector"] == api["spec"]["template"]["metadata"]["labels"]
    assert service["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]


def test_services_select_their_pods(objects):
    for (kind, name), obj in objects.items():
        if kind != "Service":
            continue
        selected = [workload for workload in workloads(objects).values()
                    if obj["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, name
        ports = {port["name"] for port in only_container(selected[0])["ports"]}
        assert {port["targetPort"] for port in obj["spec"]["ports"]} <= ports, name


def test_kustomize_names_the_images_the_manifests_use(kustomization, objects):
    used = {only_container(obj)["image"] for obj in workloads(objects).values()} - {"redis:7"}
    assert {image["name"] for image in kustomization["images"]} == used == {"xwinbot-worker", "xwinbot-adapter"}
    assert kustomization["namespace"] == "xwinbot"
    assert objects[("Namespace", "xwinbot")]
