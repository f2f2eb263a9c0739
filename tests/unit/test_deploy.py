"""deploy/: compose and the Helm chart validated statically (no container engine here).

The compose file is parsed by the strict compose-spec parser and cross-checked: every
secret, config and volume it names exists, each command is a real CLI with real options,
each service mounts only its own kit (never the CA key), the configs validate and match
the kits that ``fedhe provision`` writes for deploy/compose/project.yaml.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import compose_spec
import pytest
import yaml
from click.testing import CliRunner

from fedhe_cli.app import cli
from fedhe_cli.provision import ProjectConfig, provision
from fedhe_common.config.load import load_yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE_DIR = ROOT / "deploy" / "compose"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    return doc


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/compose/project.yaml provisioned for real into a temporary pki/."""
    out = tmp_path_factory.mktemp("compose") / "pki"
    provision(load_yaml(COMPOSE_DIR / "project.yaml", ProjectConfig), out)
    return out


def test_compose_parses_with_the_strict_compose_spec() -> None:
    parsed = compose_spec.PyCompose.from_json(json.dumps(_compose()))
    assert set(parsed.service_names()) >= {"keyauth", "server", "prometheus"}
    bad = _compose()
    bad["services"]["server"]["healthcheck"]["tset"] = ["CMD", "true"]
    with pytest.raises(ValueError, match="tset"):
        compose_spec.PyCompose.from_json(json.dumps(bad))


def test_compose_has_three_clients_built_images_and_grpc_health_checks() -> None:
    services = _compose()["services"]
    clients = [n for n, s in services.items() if s["command"][0] == "fedhe-client"]
    assert len(clients) == 3
    job = yaml.safe_load((COMPOSE_DIR / "config" / "job.yaml").read_text())
    assert job["participants"]["min_clients"] <= len(clients)
    stages = set(re.findall(r"^FROM .* AS (\S+)$", DOCKERFILE.read_text(), re.M))
    for name, service in services.items():
        if name == "prometheus":
            continue
        build = service["build"]
        assert (ROOT / "deploy" / "compose" / build["context"] / build["dockerfile"]).exists()
        assert build["target"] in stages, name
    for name in ("keyauth", "server"):
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "/opt/fedhe/healthcheck.py"], name
        assert "COPY deploy/docker/healthcheck.py /opt/fedhe/healthcheck.py" in (
            DOCKERFILE.read_text()
        )


def test_compose_references_exist() -> None:
    doc = _compose()
    for name, service in doc["services"].items():
        for ref in service.get("secrets", []):
            assert ref["source"] in doc["secrets"], f"{name}: secret {ref['source']}"
        for ref in service.get("configs", []):
            assert ref["source"] in doc["configs"], f"{name}: config {ref['source']}"
            assert (COMPOSE_DIR / doc["configs"][ref["source"]]["file"]).exists()
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert source in doc["volumes"], f"{name}: volume {source}"
            assert target == "/state", "the image creates /state owned by its user"
        for dep in service.get("depends_on", []):
            assert dep in doc["services"], f"{name}: depends on {dep}"
    assert "chown 10001:10001 /state" in DOCKERFILE.read_text()
    assert "USER 10001" in DOCKERFILE.read_text()


def test_compose_commands_exist() -> None:
    for name, service in _compose()["services"].items():
        command = service["command"]
        if name == "prometheus":
            continue
        help_run = subprocess.run(
            [str(BIN / command[0]), command[1], "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert help_run.returncode == 0, f"{name}: {help_run.stderr}"
        for flag in (c for c in command if c.startswith("--")):
            assert flag in help_run.stdout, f"{name}: {flag} not an option"


def _config_for(doc: dict[str, Any], service: dict[str, Any], target: str) -> dict[str, Any]:
    (ref,) = [c for c in service["configs"] if c["target"] == target]
    path = COMPOSE_DIR / doc["configs"][ref["source"]]["file"]
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def test_each_service_mounts_only_its_own_kit(kits: Path) -> None:
    doc = _compose()
    for name, service in doc["services"].items():
        if name == "prometheus":
            continue
        config_target = service["command"][service["command"].index("--config") + 1]
        config = _config_for(doc, service, config_target)
        own_id = config.get("client_id") or name
        mounted = {}
        for ref in service["secrets"]:
            rel = doc["secrets"][ref["source"]]["file"]
            path = (COMPOSE_DIR / rel).resolve()
            assert path.name != "ca.key" and "/ca/" not in rel, f"{name} mounts the CA"
            kit = COMPOSE_DIR / "pki" / "kits" / own_id
            assert path.parent == kit.resolve(), f"{name} mounts {rel} (not its kit)"
            real = kits / path.relative_to((COMPOSE_DIR / "pki").resolve())
            assert real.is_file(), f"{name}: fedhe provision writes no {rel}"
            mounted[f"/run/secrets/{ref['target']}"] = real
        # every file the config names is one of this service's secrets
        tls_paths = re.findall(r"/run/secrets/[\w.]+", json.dumps(config))
        assert tls_paths and set(tls_paths) <= set(mounted), name
    for secret in doc["secrets"].values():
        assert "ca.key" not in secret["file"]


def test_compose_configs_validate_and_match_the_kits(kits: Path) -> None:
    for path in sorted((COMPOSE_DIR / "config").glob("*.yaml")):
        result = CliRunner().invoke(cli, ["config", "validate", str(path)])
        assert result.exit_code == 0, f"{path}: {result.output}"
    for name in ("keyauth", "server"):
        ours = yaml.safe_load((COMPOSE_DIR / "config" / f"{name}.yaml").read_text())
        kit = yaml.safe_load((kits / "kits" / name / f"{name}.yaml").read_text())
        assert ours["identities"] == kit["identities"], name
        assert ours["listen"] == kit["listen"], name
    ours = yaml.safe_load((COMPOSE_DIR / "config" / "server.yaml").read_text())
    assert ours["keyauth"]["address"] == kit["keyauth"]["address"]
    for site in ("site-1", "site-2", "site-3"):
        ours = yaml.safe_load((COMPOSE_DIR / "config" / f"{site}.yaml").read_text())
        kit = yaml.safe_load((kits / "kits" / site / "client.yaml").read_text())
        for key in ("client_id", "partition"):
            assert ours[key] == kit[key], f"{site}: {key}"
        for peer in ("server", "keyauth"):
            assert ours[peer]["address"] == kit[peer]["address"], f"{site}: {peer}"


def test_prometheus_scrapes_the_server_metrics_port() -> None:
    server = yaml.safe_load((COMPOSE_DIR / "config" / "server.yaml").read_text())
    prom = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = [
        t for job in prom["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert f"server:{server['metrics_port']}" in targets
    assert str(server["metrics_port"]) in _compose()["services"]["server"]["expose"]


def test_dockerignore_keeps_venv_state_and_secrets_out() -> None:
    patterns = (ROOT / ".dockerignore").read_text().split()
    for needed in (".venv", ".git", "deploy/compose/pki", "**/*.key", "**/kits", "**/state"):
        assert needed in patterns, needed


NO_TORCH = """
import importlib.abc, importlib, pkgutil, sys
BLOCKED = {"torch", "transformers", "peft"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not in the service image")
        return None
sys.meta_path.insert(0, Block())
import fedhe_server, fedhe_keyauth
for pkg in (fedhe_server, fedhe_keyauth):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
from fedhe_server.cli import main as server_main
from fedhe_keyauth.cli import main as keyauth_main
for main in (server_main, keyauth_main):
    sys.argv = ["prog", "serve", "--help"]
    try:
        main()
    except SystemExit as exc:
        assert exc.code == 0, exc.code
"""


def test_service_image_runs_without_torch() -> None:
    run = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def _requirement_names(lines: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ]", line.strip(), maxsplit=1)[0].lower() for line in lines}


def test_service_requirements_are_pyproject_without_torch() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    service = [
        line
        for line in (ROOT / "deploy/docker/requirements-service.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert sorted(service) == sorted(d for d in deps if _requirement_names([d]).isdisjoint(
        {"torch", "transformers", "peft"}
    ))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_healthcheck_probes_a_real_key_authority_over_mutual_tls(kits: Path) -> None:
    kit = kits / "kits" / "keyauth"
    config = yaml.safe_load((kit / "keyauth.yaml").read_text())
    port = _free_port()
    config["listen"] = f"127.0.0.1:{port}"
    path = kit / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    probe = [sys.executable, str(HEALTHCHECK), "--config", str(path), "--timeout", "1"]
    down = subprocess.run(probe, capture_output=True, text=True)
    assert down.returncode == 1 and "unhealthy" in down.stderr
    proc = subprocess.Popen(
        [str(BIN / "fedhe-keyauth"), "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            up = subprocess.run(probe, capture_output=True, text=True)
            if up.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == "SERVING"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ----------------------------------------------------------------------- Helm chart
sys.path.insert(0, str(ROOT / "deploy" / "helm"))
import render  # noqa: E402


def test_chart_renders_and_validates_against_kubernetes_schemas() -> None:
    import kubernetes_validate

    docs = render.render_chart()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert ("StatefulSet", "fedhe-keyauth") in kinds and ("StatefulSet", "fedhe-server") in kinds
    assert [k for k in kinds if k[0] == "Deployment"] == [
        ("Deployment", f"fedhe-site-{i}") for i in (1, 2, 3)
    ]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
    bad = {**docs[0], "spec": {**docs[0]["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.37.0", strict=True)


def test_chart_statefulsets_have_volumes_probes_and_only_their_kit() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render.render_chart()}
    for role in ("keyauth", "server"):
        spec = docs[("StatefulSet", f"fedhe-{role}")]["spec"]
        assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
        (container,) = spec["template"]["spec"]["containers"]
        probe = container["readinessProbe"]["exec"]["command"]
        assert probe[1] == "/opt/fedhe/healthcheck.py" and "livenessProbe" in container
        secrets = [v["secret"]["secretName"] for v in spec["template"]["spec"]["volumes"]
                   if "secret" in v]
        assert secrets == [f"fedhe-{role}-kit"]
    for i in (1, 2, 3):
        spec = docs[("Deployment", f"fedhe-site-{i}")]["spec"]["template"]["spec"]
        secrets = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
        assert secrets == [f"fedhe-site-{i}-kit"]


def test_chart_configs_validate_and_match_provisioned_kits(tmp_path: Path) -> None:
    from fedhe_common.config.models import ClientConfig, KeyAuthConfig, ServerConfig

    (config_map,) = [d for d in render.render_chart() if d["kind"] == "ConfigMap"]
    data = {k: yaml.safe_load(v) for k, v in config_map["data"].items()}
    KeyAuthConfig.model_validate(data["keyauth.yaml"])
    ServerConfig.model_validate(data["server.yaml"])
    out = tmp_path / "pki"
    provision(load_yaml(ROOT / "deploy" / "helm" / "project.yaml", ProjectConfig), out)
    for name in ("keyauth", "server"):
        kit = yaml.safe_load((out / "kits" / name / f"{name}.yaml").read_text())
        assert data[f"{name}.yaml"]["identities"] == kit["identities"]
    for i in (1, 2, 3):
        ours = ClientConfig.model_validate(data[f"site-{i}.yaml"])
        kit = yaml.safe_load((out / "kits" / f"site-{i}" / "client.yaml").read_text())
        assert ours.server.address == kit["server"]["address"]
        assert ours.keyauth.address == kit["keyauth"]["address"]
        assert ours.partition.model_dump(exclude_none=True) == kit["partition"]


def test_renderer_refuses_syntax_outside_its_subset() -> None:
    with pytest.raises(render.TemplateError):
        render.render_text("{{ .Values.a | quote }}", {"a": 1}, "r")
    with pytest.raises(render.TemplateError):
        render.render_text("{{ .Values.missing }}", {}, "r")
    text = "a:\n{{- range $x := .Values.l }}\n  - {{ $x.n }}{{ $.Release.Name }}\n{{- end }}\n"
    assert render.render_text(text, {"l": [{"n": 1}, {"n": 2}]}, "r") == "a:\n  - 1r\n  - 2r\n"
