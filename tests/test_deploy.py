"""The deployment in deploy/ passes its linters and keeps the properties a reviewer looks for.

hadolint lints deploy/Containerfile and `kubernetes-validate --strict` every manifest under
deploy/k8s (both are pip packages of the test extras, run from this interpreter's folder,
offline): no finding, no error, no warning. Then the files themselves are read: every
Kubernetes container runs as a numeric non-root user with a read-only root filesystem, no
capability and set resources; no Secret is committed; the network policy lets in and out only
what the runbook says; compose runs the migration before the API and the worker; the image runs
gunicorn as uid 10001 in exec form and never migrates on start. deploy/smoke.sh builds and runs
the image itself (in .ci/run).
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CONTAINERFILE = DEPLOY / "Containerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
TIMEOUT = 120
# A password in a URL's user part (scheme://user:password@host).
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
# kubernetes-validate's default (its newest schemas) and an older release still in service: the
# manifests use nothing newer (CronJob.timeZone is GA from 1.27).
KUBERNETES_VERSIONS = (None, "1.29.0")
UID = 10001
IMAGE = "registry.example.org/casehub:0.1.0"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
FIGURES = "deploy lint"


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: it comes with the test extras (pip install -e '.[test]')")
    return path


def run(command: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


# -- reading the files ---------------------------------------------------------------------------
def manifest_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))


@functools.cache
def documents() -> tuple[tuple[Path, dict[str, Any]], ...]:
    """Every object in the manifests, parsed once (read, never changed, by the tests)."""
    found = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path, doc))
    return tuple(found)


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]


def workloads() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(kind/name, pod template, pod spec) of every object that runs pods."""
    for _, doc in documents():
        if doc["kind"] in WORKLOAD_KINDS:
            template = pod_template(doc)
            yield f"{doc['kind']}/{doc['metadata']['name']}", template, template["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def environment(container: dict[str, Any]) -> dict[str, Any]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def config_map_data(container: dict[str, Any]) -> dict[str, str]:
    """The settings a container gets from ConfigMaps committed here (envFrom)."""
    data: dict[str, str] = {}
    for source in container.get("envFrom", []):
        reference = source.get("configMapRef")
        if reference:
            data.update(named("ConfigMap", reference["name"]).get("data", {}))
    return data


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in CONTAINERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = containerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


# -- the linters ---------------------------------------------------------------------------------
def test_hadolint_finds_nothing_in_the_containerfile(
    record_property: Callable[[str, object], None],
) -> None:
    result = run([tool("hadolint"), "--no-color", "-f", "json", CONTAINERFILE])
    try:
        findings = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"hadolint printed no JSON ({result.returncode}): {result.stderr[-2000:]}")
    # An ignored rule is allowed only with its reason written above it.
    lines = CONTAINERFILE.read_text().splitlines()
    pragmas = [i for i, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    unexplained = [i + 1 for i in pragmas if i == 0 or not lines[i - 1].startswith("# ")]
    record_property(
        "figures", (FIGURES, {"hadolint findings": len(findings), "hadolint ignores": len(pragmas)})
    )
    assert not findings, "hadolint:\n" + "\n".join(
        f"  line {f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert result.returncode == 0, result.stderr
    assert not unexplained, f"hadolint ignore pragmas without a reason above: lines {unexplained}"


def test_kubernetes_validate_strict_passes_every_manifest(
    record_property: Callable[[str, object], None],
) -> None:
    files = manifest_files()
    objects = len(documents())
    assert files, f"no manifests under {K8S}"
    errors: list[str] = []
    warnings: list[str] = []
    for version in KUBERNETES_VERSIONS:
        command: list[str | Path] = [tool("kubernetes-validate"), "--strict"]
        if version:
            command += ["--kubernetes-version", version]
        result = run([*command, *files])
        lines = (result.stdout + result.stderr).splitlines()
        errors += [line for line in lines if line.startswith("ERROR")]
        warnings += [line for line in lines if line.startswith("WARN")]
        passed = [line for line in lines if line.startswith("INFO") and " passed for " in line]
        # Each object is validated, not skipped (an unknown kind is only a warning).
        assert len(passed) == objects or errors, (
            f"kubernetes-validate {version or 'default'}: {len(passed)} of {objects} objects "
            "passed:\n" + "\n".join(lines)
        )
        if not errors:
            assert result.returncode == 0, "\n".join(lines)
    record_property(
        "figures",
        (
            FIGURES,
            {
                "manifests": len(files),
                "objects": objects,
                "kubernetes-validate errors": len(errors),
                "kubernetes-validate warnings": len(warnings),
            },
        ),
    )
    assert not errors and not warnings, "\n".join(errors + warnings)


# -- Kubernetes: what a reviewer checks ------------------------------------------------------------
def test_every_container_runs_unprivileged_with_resources() -> None:
    seen = 0
    for where, _, pod in workloads():
        pod_security = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        assert all("hostPath" not in volume for volume in pod.get("volumes", [])), where
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for container in containers(pod):
            seen += 1
            name = f"{where} container {container['name']}"
            security = {**pod_security, **container.get("securityContext", {})}
            assert container.get("securityContext", {}).get("runAsNonRoot") is True, name
            assert isinstance(security.get("runAsUser"), int) and security["runAsUser"] == UID
            assert security.get("readOnlyRootFilesystem") is True, name
            assert security.get("allowPrivilegeEscalation") is False, name
            assert security.get("privileged") is not True, name
            assert security.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not security.get("capabilities", {}).get("add"), name
            assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
            resources = container.get("resources", {})
            for key in ("cpu", "memory"):
                assert key in resources.get("requests", {}), f"{name}: requests.{key}"
                assert key in resources.get("limits", {}), f"{name}: limits.{key}"
            assert container["image"] == IMAGE, f"{name}: every workload runs the same image"
            # The root filesystem is read-only: /tmp is the one writable place (gunicorn's
            # heartbeats, the metrics folder).
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{name}: /tmp emptyDir"
    assert seen >= 6, f"only {seen} containers found"


def test_no_secret_is_committed_and_secrets_come_by_reference() -> None:
    for path, doc in documents():
        if doc["kind"] == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"{path}: Secret with data"
    for config_map in of_kind("ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            assert not re.search(r"PASSWORD|SECRET|TOKEN", key), f"{key} in a ConfigMap"
            assert "-----BEGIN" not in value and not CREDENTIALS_IN_URL.search(value), key
    secret_settings = {"CASEHUB_DATABASE_URL", "CASEHUB_RATE_LIMIT_STORAGE"}
    for where, _, pod in workloads():
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for container in containers(pod):
            env = environment(container)
            assert "CASEHUB_DATABASE_URL" in env, f"{where}: no database"
            for name in secret_settings & set(env):
                assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{where}: {name} inline"
            for entry in env.values():
                value = str(entry.get("value", ""))
                assert "-----BEGIN" not in value and not CREDENTIALS_IN_URL.search(value)
            # The private keys reach a container only as Secret volumes, read-only.
            settings = config_map_data(container)
            for setting in ("CASEHUB_SIGNING_KEYS_FILE", "CASEHUB_WEBHOOK_KEY_FILE"):
                folder = str(Path(settings[setting]).parent)
                for mount in container.get("volumeMounts", []):
                    if mount["mountPath"] == folder:
                        assert mount.get("readOnly") is True, f"{where}: {folder} writable"
                        assert "secret" in volumes[mount["name"]], f"{where}: {folder}"


def mounted_sources(pod: dict[str, Any], container: dict[str, Any]) -> set[str]:
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    names = set()
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" in volume:
            names.add(f"Secret/{volume['secret']['secretName']}")
        if "configMap" in volume:
            names.add(f"ConfigMap/{volume['configMap']['name']}")
    return names


def test_each_workload_gets_only_the_keys_it_uses() -> None:
    expected = {
        "Deployment/casehub-api": {
            "Secret/casehub-signing-keys",
            "Secret/casehub-webhook-key",
            "ConfigMap/casehub-audit-checkpoint-public",
        },
        "Deployment/casehub-webhook-worker": {"Secret/casehub-webhook-key"},
        "Deployment/casehub-audit-sequencer": set(),
        "Job/casehub-migrate": set(),
        "CronJob/casehub-audit-checkpoint": {"Secret/casehub-audit-checkpoint-key"},
        "CronJob/casehub-audit-verify": {"ConfigMap/casehub-audit-checkpoint-public"},
        "CronJob/casehub-audit-partitions": set(),
        "CronJob/casehub-retention": set(),
        "CronJob/casehub-statistics-refresh": set(),
    }
    found = {
        where: set().union(*(mounted_sources(pod, c) for c in containers(pod)))
        for where, _, pod in workloads()
    }
    assert found == expected


def command_of(pod: dict[str, Any]) -> list[str] | None:
    return pod["containers"][0].get("command")


def test_the_api_is_probed_scaled_and_budgeted() -> None:
    api = named("Deployment", "casehub-api")
    pod = pod_template(api)["spec"]
    (container,) = pod["containers"]
    assert command_of(pod) is None and "args" not in container, "the image's gunicorn"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {p["containerPort"] for p in container["ports"]} == {8000}
    assert "replicas" not in api["spec"], "the HorizontalPodAutoscaler owns the replica count"
    labels = pod_template(api)["metadata"]["labels"]

    hpa = named("HorizontalPodAutoscaler", "casehub-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "casehub-api",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    budgets = [
        pdb for pdb in of_kind("PodDisruptionBudget") if selects(pdb["spec"]["selector"], labels)
    ]
    assert len(budgets) == 1 and budgets[0]["apiVersion"] == "policy/v1"
    service = named("Service", "casehub-api")
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    assert service["spec"]["type"] == "ClusterIP"


def test_one_audit_sequencer_and_migrations_apart_from_the_start() -> None:
    config = named("ConfigMap", "casehub-config")["data"]
    assert config["CASEHUB_AUDIT_SEQUENCER"] == "0", "API processes must not chain the audit trail"
    assert config["CASEHUB_ENV"] == "production"
    assert config["CASEHUB_ISSUER"].startswith("https://")
    commands = {where: command_of(pod) for where, _, pod in workloads()}
    sequencers = [w for w, c in commands.items() if c == ["casehub", "audit", "sequence"]]
    assert sequencers == ["Deployment/casehub-audit-sequencer"]
    assert named("Deployment", "casehub-audit-sequencer")["spec"]["replicas"] == 1
    assert commands["Job/casehub-migrate"] == ["casehub", "db", "upgrade"]
    assert [w for w, c in commands.items() if c and "upgrade" in c] == ["Job/casehub-migrate"]
    assert commands["Deployment/casehub-webhook-worker"] == ["casehub", "webhooks", "worker"]
    assert commands["CronJob/casehub-audit-checkpoint"] == ["casehub", "audit", "checkpoint"]
    assert commands["CronJob/casehub-audit-verify"][:3] == ["casehub", "audit", "verify"]
    assert commands["CronJob/casehub-audit-partitions"] == [
        "casehub",
        "audit",
        "partitions",
        "--ensure",
    ]
    assert commands["CronJob/casehub-retention"] == ["casehub", "retention", "run"]
    assert commands["CronJob/casehub-statistics-refresh"] == ["casehub", "statistics", "refresh"]
    for name in (
        "casehub-audit-checkpoint",
        "casehub-audit-verify",
        "casehub-audit-partitions",
        "casehub-retention",
        "casehub-statistics-refresh",
    ):
        assert named("CronJob", name)["spec"]["concurrencyPolicy"] == "Forbid"
    # The API's processes share the rate-limit storage (production refuses per-process
    # counters); commands serve nothing and hold no Redis credentials. Nothing turns limits off.
    for where, _, pod in workloads():
        env = environment(pod["containers"][0])
        assert "CASEHUB_RATE_LIMITS_ENABLED" not in env, where
        if where == "Deployment/casehub-api":
            storage = env["CASEHUB_RATE_LIMIT_STORAGE"]["valueFrom"]["secretKeyRef"]
            assert storage == {"name": "casehub-redis", "key": "url"}, where
        else:
            assert "CASEHUB_RATE_LIMIT_STORAGE" not in env, where


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used here"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def allowed_ports(labels: dict[str, str], direction: str) -> set[int]:
    """The ports the namespace's policies open for pods with these labels ("ingress"/"egress")."""
    policy_type = direction.capitalize()
    ports: set[int] = set()
    for policy in of_kind("NetworkPolicy"):
        spec = policy["spec"]
        if policy_type in spec["policyTypes"] and selects(spec["podSelector"], labels):
            for rule in spec.get(direction, []):
                assert rule.get("ports"), f"{policy['metadata']['name']}: a rule for every port"
                ports |= {port["port"] for port in rule["ports"]}
    return ports


def test_network_policy_lets_through_only_what_each_part_needs() -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind("NetworkPolicy")}
    deny = [
        spec
        for spec in policies.values()
        if spec["podSelector"] == {}
        and set(spec["policyTypes"]) == {"Ingress", "Egress"}
        and not spec.get("ingress")
        and not spec.get("egress")
    ]
    assert deny, "a default-deny policy for the whole namespace"
    expected_egress = {
        "Deployment/casehub-api": {53, 5432, 6379},
        "Deployment/casehub-webhook-worker": {53, 443, 5432},
    }
    for where, template, _ in workloads():
        labels = template["metadata"]["labels"]
        ingress = allowed_ports(labels, "ingress")
        assert ingress == ({8000} if where == "Deployment/casehub-api" else set()), where
        assert allowed_ports(labels, "egress") == expected_egress.get(where, {53, 5432}), where
    # The API is reached only from the ingress controller's pods.
    api_labels = pod_template(named("Deployment", "casehub-api"))["metadata"]["labels"]
    for spec in policies.values():
        if "Ingress" in spec["policyTypes"] and selects(spec["podSelector"], api_labels):
            for rule in spec.get("ingress", []):
                for peer in rule["from"]:
                    assert "ipBlock" not in peer
                    assert peer["namespaceSelector"]["matchLabels"]
                    assert peer["podSelector"]["matchLabels"]
    # Webhooks go to public addresses only, as casehub itself checks.
    worker = policies["casehub-webhook-worker-egress"]
    blocks = [peer["ipBlock"] for rule in worker["egress"] for peer in rule["to"]]
    ipv4 = next(block for block in blocks if block["cidr"] == "0.0.0.0/0")
    for private in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"):
        assert private in ipv4["except"]


# -- compose -------------------------------------------------------------------------------------
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


CASEHUB_SERVICES = ("migrate", "api", "worker", "sequencer", "audit")


def test_compose_migrates_before_the_api_and_the_worker_start() -> None:
    services = compose()["services"]
    assert {"api", "worker", "migrate", "postgres", "redis", "sequencer"} <= set(services)
    migrate = services["migrate"]
    assert migrate["command"] == ["casehub", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "sequencer"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    assert "command" not in services["api"], "the image's gunicorn"
    assert services["worker"]["command"] == ["casehub", "webhooks", "worker"]
    assert services["sequencer"]["command"] == ["casehub", "audit", "sequence"]
    api_env = services["api"]["environment"]
    assert api_env["CASEHUB_RATE_LIMIT_STORAGE"] == "redis://redis:6379/0"
    assert all(
        "CASEHUB_RATE_LIMIT_STORAGE" not in services[n]["environment"]
        for n in CASEHUB_SERVICES
        if n != "api"
    )
    assert all(
        "CASEHUB_RATE_LIMITS_ENABLED" not in services[n]["environment"] for n in CASEHUB_SERVICES
    )
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api_env["CASEHUB_AUDIT_SEQUENCER"] == "0"
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"], "published on loopback only"


def test_compose_takes_secrets_from_files_and_runs_unprivileged() -> None:
    document = compose()
    secrets = document["secrets"]
    assert secrets and all(set(entry) == {"file"} for entry in secrets.values()), secrets
    for name, service in document["services"].items():
        env = {key: str(value) for key, value in service.get("environment", {}).items()}
        for key, value in env.items():
            assert not re.search(r"PASSWORD$|SECRET$|TOKEN$", key), f"{name}: {key} inline"
            assert "-----BEGIN" not in value and not CREDENTIALS_IN_URL.search(value), key
        # Each secret a service mounts is one a setting of its names (production needs every
        # *_FILE setting to be set; the file is read only by the services that use it).
        for secret in service.get("secrets", []):
            if secret != "postgres_password":
                assert f"/run/secrets/{secret}" in env.values(), f"{name}: {secret} unused"
    for name in CASEHUB_SERVICES:
        service = document["services"][name]
        assert service["read_only"] is True and service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["user"] == f"{UID}:{UID}", name
        # The image's HEALTHCHECK asks the API's port: only the API keeps it.
        assert (service.get("healthcheck", {}).get("disable") is True) == (name != "api"), name
    mounted = {name: set(s.get("secrets", [])) for name, s in document["services"].items()}
    assert mounted == {
        "postgres": {"postgres_password"},
        "redis": set(),
        "migrate": {"casehub_pgpass"},
        "api": {
            "casehub_pgpass",
            "casehub_signing_keys",
            "casehub_webhook_key",
            "casehub_audit_checkpoint_public",
        },
        "worker": {"casehub_pgpass", "casehub_webhook_key"},
        "sequencer": {"casehub_pgpass"},
        "audit": {"casehub_pgpass", "casehub_audit_checkpoint_key"},
    }, "each service gets only the secrets it uses (the private checkpoint key: audit alone)"


# -- the image -------------------------------------------------------------------------------------
def test_containerfile_runs_gunicorn_as_a_numeric_user_and_never_migrates_on_start() -> None:
    instructions = containerfile_instructions()
    assert instructions[0] == ("ARG", "BASE=python:3.12-slim")
    assert ("ARG", "PIP_CERT") in instructions
    stage = final_stage()
    users = [arguments for keyword, arguments in stage if keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), users
    assert int(users[-1].split(":")[0]) == UID
    (cmd,) = [arguments for keyword, arguments in stage if keyword == "CMD"]
    argv = json.loads(cmd)  # the exec form: gunicorn is PID 1 and gets SIGTERM itself
    assert argv == ["gunicorn", "-c", "deploy/gunicorn.conf.py", "wsgi:app"]
    assert not [k for k, _ in stage if k == "ENTRYPOINT"], "no wrapper that could migrate"
    (healthcheck,) = [arguments for keyword, arguments in stage if keyword == "HEALTHCHECK"]
    test = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert test[0] == "python" and "/healthz" in test[-1]
    env = " ".join(arguments for keyword, arguments in stage if keyword == "ENV")
    assert "CASEHUB_BIND=0.0.0.0:8000" in env
    assert re.search(r"PROMETHEUS_MULTIPROC_DIR=/tmp/\S+", env)
    for keyword, arguments in instructions:
        assert not (
            keyword in ("ENV", "ARG") and re.search(r"PASSWORD|SECRET|TOKEN|_KEY", arguments)
        )
        assert keyword != "ADD", "COPY only: nothing fetched from a URL at build time"
        if keyword == "COPY":
            assert not re.search(r"instance|\.pem|signing-keys|webhook-key", arguments)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for path in (".git", ".venv", "instance", "**/node_modules"):
        assert path in ignored, f".dockerignore: {path}"
