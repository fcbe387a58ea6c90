"""The reference deployment (deploy/) matches the engine it deploys.

An ops team adapts these files rather than writing them, so each claim they make about
the engine is checked against the real thing: every `ringback` command line parses
with the real CLI, the probes hit routes a real engine answers 200 on, the config and
rule pack in the ConfigMap load, the Valkey config starts a real valkey-server in
cluster mode with an AOF, and the stop timeouts leave room for the configured drain.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from engine.cli.main import build_parser
from engine.core.settings import Settings, load_settings
from engine.decisions.loader import load_rules
from engine.http.routes import ROUTES
from engine.valkey.embedded import valkey_binary

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
ENV_EXAMPLE = SYSTEMD / "ringback.env.example"

# What a worker may spend after SIGTERM besides draining: the supervisor kills a worker
# still alive shutdown_timeout_s + 30 s after it forwarded SIGTERM
# (engine/cli/server.py `_wait_all`); each cleanup step is bounded to 5 s.
SUPERVISOR_MARGIN_S = 30


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def unit(path: Path) -> dict[str, list[str]]:
    """A systemd unit's [Service] settings (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def exec_start(path: Path) -> list[str]:
    """ExecStart as systemd would run it for instance 8080 with the example env file."""
    env = env_example()
    line = unit(path)["ExecStart"][0].replace("%i", "8080")
    missing = [v for v in re.findall(r"\$\{(\w+)\}", line) if v not in env]
    assert not missing, f"{path.name} uses {missing}, not set in {ENV_EXAMPLE.name}"
    return shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], line))


@pytest.fixture
def deployed_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The ConfigMap's ringback.toml, loaded with the Secret's keys in the environment."""
    secret = find("Secret", "ringback-secrets")["stringData"]
    for key, value in secret.items():
        monkeypatch.setenv(key, value)
    config = find("ConfigMap", "ringback-config")["data"]["ringback.toml"]
    path = tmp_path / "ringback.toml"
    path.write_text(config)
    return load_settings(path, data_dir=tmp_path / "data")


def test_every_manifest_is_valid_yaml_with_a_kind_and_a_name() -> None:
    docs = k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "StatefulSet",
        "Job",
        "ConfigMap",
        "Secret",
    } <= kinds
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]


def test_every_ringback_command_line_parses_with_the_real_cli() -> None:
    lines: list[list[str]] = []
    for doc in k8s_docs():
        if doc["kind"] != "Deployment":
            continue
        for c in containers(doc):
            assert c["command"][0] == "ringback"
            lines.append(c["command"][1:])
    for path in (SYSTEMD / "ringback@.service", SYSTEMD / "ringback-learner.service"):
        argv = exec_start(path)
        assert argv[0].endswith("/ringback")
        lines.append(argv[1:])
    commands = set()
    for argv in lines:
        args = build_parser().parse_args(argv)  # an unknown flag exits (SystemExit)
        commands.add(args.command)
        assert args.cluster, f"{argv}: every process talks to the Valkey Cluster"
        assert args.config == "/etc/ringback/ringback.toml"
        if args.command == "serve":
            assert args.workers >= 1 and args.host == "0.0.0.0"
    assert commands == {"serve", "learn"}


def test_the_systemd_worker_count_comes_from_the_env_file() -> None:
    argv = exec_start(SYSTEMD / "ringback@.service")
    args = build_parser().parse_args(argv[1:])
    assert args.workers == int(env_example()["RINGBACK_WORKERS"]) and args.port == 8080


async def test_probes_point_at_routes_a_real_engine_answers(make_engine: Any) -> None:
    served = {r.path for r in ROUTES if r.method == "GET"}
    paths = set()
    for c in containers(find("Deployment", "ringback-worker")):
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            get = c[probe]["httpGet"]
            assert get["port"] in {p["name"] for p in c["ports"]}
            paths.add(get["path"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert paths <= served
    engine = await make_engine()
    for path in sorted(paths):
        status, body = await engine.get_json(path)
        assert status == 200, (path, body)


def test_the_config_and_rule_pack_in_the_configmap_load(
    deployed_settings: Settings, tmp_path: Path
) -> None:
    s = deployed_settings
    assert s.redis_cluster and s.replica_acks >= 1
    assert not s.learning.learner, "serving pods leave learning to the learner Deployment"
    worker = containers(find("Deployment", "ringback-worker"))[0]
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert s.port == ports["http"] and s.metrics.port == ports["metrics"]
    assert s.metrics.token is not None, "/metrics on a non-loopback bind needs its token"
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for name, text in find("ConfigMap", "ringback-rules")["data"].items():
        (rules_dir / name).write_text(text)
    assert load_rules(rules_dir).rules


def test_every_secret_the_config_names_is_in_the_secret_and_the_env_file() -> None:
    config = find("ConfigMap", "ringback-config")["data"]["ringback.toml"]
    named = set(re.findall(r'_env\s*=\s*"(\w+)"', config)) | {"REDIS_URL"}
    assert named <= set(find("Secret", "ringback-secrets")["stringData"])
    assert named <= set(env_example())


def test_stop_timeouts_leave_room_for_the_drain(deployed_settings: Settings) -> None:
    drain = deployed_settings.shutdown_timeout_s
    worker = find("Deployment", "ringback-worker")["spec"]["template"]["spec"]
    pre_stop = worker["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = worker["terminationGracePeriodSeconds"]
    assert grace > int(pre_stop[1]) + drain + SUPERVISOR_MARGIN_S
    service = unit(SYSTEMD / "ringback@.service")
    assert int(service["TimeoutStopSec"][0]) > drain + SUPERVISOR_MARGIN_S
    assert service["KillMode"] == ["mixed"], "SIGTERM to the supervisor, which forwards it"
    assert service["Restart"] == ["on-failure"]
    learner = find("Deployment", "ringback-learner")["spec"]
    assert learner["replicas"] == 2
    # Learner.stop() waits up to 10 s for the last publish, then closes the store.
    assert learner["template"]["spec"]["terminationGracePeriodSeconds"] > 10 + 5
    assert int(unit(SYSTEMD / "ringback-learner.service")["TimeoutStopSec"][0]) > 10 + 5


def test_units_are_hardened() -> None:
    for path in (SYSTEMD / "ringback@.service", SYSTEMD / "ringback-learner.service"):
        s = unit(path)
        assert s["User"] == ["ringback"] and s["NoNewPrivileges"] == ["yes"]
        assert s["ProtectSystem"] == ["strict"] and s["PrivateTmp"] == ["yes"]
        data_dir = build_parser().parse_args(exec_start(path)[1:]).data_dir
        assert s["ReadWritePaths"] == [data_dir]
        assert int(s["LimitNOFILE"][0]) >= 4096


def test_autoscaler_budget_and_service_select_the_worker_pods() -> None:
    worker = find("Deployment", "ringback-worker")
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert worker["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert find("Service", "ringback")["spec"]["selector"].items() <= labels.items()
    assert (
        find("PodDisruptionBudget", "ringback-worker")["spec"]["selector"]["matchLabels"].items()
        <= labels.items()
    )
    hpa = find("HorizontalPodAutoscaler", "ringback-worker")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "ringback-worker"
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"


def test_valkey_cluster_has_three_primaries_with_a_replica_each() -> None:
    sts = find("StatefulSet", "valkey")
    assert sts["spec"]["replicas"] == 6
    conf = find("ConfigMap", "valkey-config")["data"]["valkey.conf"]
    directives = {
        line.split()[0]: line.split()[1:]
        for line in conf.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    assert directives["cluster-enabled"] == ["yes"]
    assert directives["appendonly"] == ["yes"]
    assert directives["maxmemory-policy"] == ["noeviction"]
    job = containers(find("Job", "valkey-cluster-init"))[0]["args"][0]
    assert "--cluster-replicas 1" in job and "for i in 0 1 2 3 4 5" in job
    seeds = find("Secret", "ringback-secrets")["stringData"]["REDIS_URL"]
    assert all(re.fullmatch(r"redis://valkey-[0-5]\.valkey:6379", s) for s in seeds.split(","))


def _free_port() -> int:
    """A free port whose cluster bus port (+10000, the manifest's `cluster-enabled yes`
    leaves it at the default) is a port too: valkey-server refuses ports above 55535
    (seen in CI: the kernel handed out 56829)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port <= 55535:
            return port


@pytest.fixture
def valkey_from_manifest(tmp_path: Path) -> Iterator[redis.Redis]:
    """A real valkey-server started with the manifest's valkey.conf (port and paths
    moved to this test's; maxmemory kept)."""
    conf = find("ConfigMap", "valkey-config")["data"]["valkey.conf"]
    port = _free_port()
    conf = conf.replace("port 6379", f"port {port}").replace("/data/", f"{tmp_path}/")
    conf += f"\nbind 127.0.0.1\ndir {tmp_path}\n"
    path = tmp_path / "valkey.conf"
    path.write_text(conf)
    proc = subprocess.Popen(
        [str(valkey_binary()), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = redis.Redis(port=port, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read() if proc.stdout else ""
                    pytest.fail(f"valkey-server refused the manifest's config:\n{out}")
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def test_a_real_valkey_accepts_the_manifest_config(valkey_from_manifest: redis.Redis) -> None:
    v = valkey_from_manifest
    assert v.info("cluster")["cluster_enabled"] == 1
    assert v.config_get("appendonly")["appendonly"] == "yes"
    assert v.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert v.config_get("cluster-preferred-endpoint-type") == {
        "cluster-preferred-endpoint-type": "hostname"
    }
