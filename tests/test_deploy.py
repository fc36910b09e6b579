"""Deployment files, checked statically (no Docker engine or cluster here): the Dockerfile runs as a
non-root user, health-checks an OIP route and exposes the ports it serves; the KServe manifests parse
and name the right ports, routes and model name."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="needs PyYAML (the dev extra)")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MODEL = "privsplit-advanced-conv5-3"  # runs/lfw-gender/bundles/advanced-conv5_3's model_name


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined, comments dropped."""
    lines = [ln for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    out = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "") for ln in lines]
    last_from = max(i for i, (ins, _) in enumerate(out) if ins == "FROM")
    return out[last_from:]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions((DEPLOY / "Dockerfile").read_text())


def test_dockerfile_slim_non_root_health_checked(dockerfile):
    args = dict(dockerfile)  # the last of each instruction
    assert "slim" in args["FROM"]
    user = args["USER"].split(":")[0]
    assert user not in ("root", "0") and user.isdigit() and int(user) >= 1000
    assert [i for i, _ in dockerfile].index("USER") > max(i for i, (ins, _) in enumerate(dockerfile) if ins == "RUN")
    health = args["HEALTHCHECK"]
    assert re.search(r"--interval=\d+s", health) and "CMD" in health
    assert "http://127.0.0.1:8000/v2/health/ready" in health
    assert set(args["EXPOSE"].split()) == {"8000", "8001"}
    entry = shlex.split(args["ENTRYPOINT"].strip("[]").replace(",", " "))
    assert entry[:3] == ["privsplit", "serve", "/mnt/models"]
    assert entry[entry.index("--port") + 1] == "8000" and entry[entry.index("--grpc-port") + 1] == "8001"
    # pinned like pyproject; both gRPC engines installed (the native one is a flag away, docs/deploy.md)
    assert "torch==2.13.0" in args["RUN"] and "[serve,grpc-native]" in args["RUN"]


def test_dockerignore_keeps_the_build_context_small():
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines.count("*") == 1 and {"!pyproject.toml", "!README.md", "!src/"} <= set(lines)


def _isvcs(name: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kserve" / name).read_text()) if d]
    assert docs and all(d["apiVersion"] == "serving.kserve.io/v1beta1" and d["kind"] == "InferenceService"
                        for d in docs)
    return docs


def test_privsplit_manifests_ports_routes_model():
    rest, grpc_svc = _isvcs("privsplit.yaml")
    for doc in (rest, grpc_svc):
        assert doc["metadata"]["labels"]["privsplit/model-name"] == MODEL
        (c,) = doc["spec"]["predictor"]["containers"]
        assert c["name"] == "kserve-container" and c["image"].endswith(":0.1.0")
        assert doc["spec"]["predictor"]["securityContext"]["runAsNonRoot"] is True
        env = {e["name"]: e for e in c["env"]}
        assert "secretKeyRef" in env["PRIVSPLIT_API_KEYS"]["valueFrom"]  # keys never inline
        assert c["resources"]["limits"]["cpu"] == "2" and c["args"][c["args"].index("--workers") + 1] == "2"
    (port,) = rest["spec"]["predictor"]["containers"][0]["ports"]
    c = rest["spec"]["predictor"]["containers"][0]
    assert port == {"name": "http1", "containerPort": 8000, "protocol": "TCP"}
    assert c["args"][c["args"].index("--port") + 1] == "8000"
    assert c["readinessProbe"]["httpGet"] == {"path": f"/v2/models/{MODEL}/ready", "port": 8000}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    assert rest["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    g = grpc_svc["spec"]["predictor"]["containers"][0]
    assert g["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    assert g["args"][g["args"].index("--grpc-port") + 1] == "8001" and g["readinessProbe"]["tcpSocket"]["port"] == 8001


def test_triton_manifest_serves_the_exported_repository():
    (doc,) = _isvcs("triton.yaml")
    model = doc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    assert f"--load-model={MODEL}" in model["args"]
    assert model["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{MODEL}/ready"
    assert doc["metadata"]["labels"]["privsplit/model-name"] == MODEL


def test_model_name_is_the_bundles():
    """The manifests' name is the LFW bundle's model_name (checked when the trained run is present)."""
    server_json = ROOT / "runs" / "lfw-gender" / "bundles" / "advanced-conv5_3" / "server" / "server.json"
    if not server_json.is_file():
        pytest.skip(f"no trained LFW bundle at {server_json}")
    assert json.loads(server_json.read_text())["model_name"] == MODEL
