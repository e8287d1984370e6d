"""`taskrunner`: dev (the whole stack on one machine), api, worker, migrate, export-schema."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

from taskrunner.config import Settings, load_settings
from taskrunner.errors import ConfigError
from taskrunner.logs import configure_logging

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema.graphql"


def cmd_api(settings: Settings) -> int:
    import uvicorn

    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        lifespan="on",
    )
    return 0


def cmd_worker(settings: Settings) -> int:
    from arq.worker import run_worker

    from workers.settings import worker_options

    run_worker(worker_options(settings))
    return 0


def cmd_migrate(settings: Settings) -> int:
    from taskrunner.db import migrate

    migrate(settings.require_database_url())
    print("migrations applied")
    return 0


def export_schema() -> str:
    from strawberry.printer import print_schema

    from api.schema import schema

    return print_schema(schema) + "\n"


def cmd_export_schema(output: str | None) -> int:
    text = export_schema()
    if output == "-":
        sys.stdout.write(text)
    else:
        path = Path(output) if output else SCHEMA_FILE
        path.write_text(text)
        print(f"wrote {path}")
    return 0


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _wait_ready(url: str, children: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if child.poll() is not None:
                raise RuntimeError(f"{child.args!r} exited with {child.returncode} at start")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the api did not become ready at {url} within {timeout:.0f}s")


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


def _require_free_port(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            raise ConfigError(
                f"PORT {port} is already in use on {host}: stop what listens there, or set "
                f"PORT to a free port (e.g. PORT={port + 1} make dev)"
            ) from None


def cmd_dev(settings: Settings) -> int:
    """Embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set), migrations,
    one api and one worker. Ctrl-C stops everything this started; the data stays."""
    from taskrunner.artifacts import load_or_create_key
    from taskrunner.db import migrate
    from taskrunner.embedded import EmbeddedPostgres, EmbeddedRedis

    _require_free_port(settings.host, settings.port)
    signal.signal(signal.SIGTERM, _raise_stop)
    # Ctrl-C stops the stack even when started from a shell that ignores SIGINT for
    # background jobs (Python would then inherit "ignore").
    signal.signal(signal.SIGINT, signal.default_int_handler)
    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    postgres = None if settings.database_url else EmbeddedPostgres(data / "postgres")
    redis = None if settings.redis_url else EmbeddedRedis(data / "redis")
    children: list[subprocess.Popen[bytes]] = []
    try:
        database_url = postgres.start() if postgres else settings.require_database_url()
        redis_url = redis.start() if redis else settings.require_redis_url()
        migrate(database_url)
        env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
        if settings.artifact_signing_key is None:
            env["ARTIFACT_SIGNING_KEY"] = load_or_create_key(data / "signing.key").hex()
        for role in ("api", "worker"):
            children.append(subprocess.Popen([sys.executable, "-m", "taskrunner", role], env=env))
        _wait_ready(f"http://127.0.0.1:{settings.port}/readyz", children, timeout=60)
        print(f"GraphiQL: http://127.0.0.1:{settings.port}/graphql", flush=True)
        print(f"PostgreSQL: {database_url}\nRedis: {redis_url}\nCtrl-C stops.", flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a process of the stack exited; stopping the rest", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stop):
        print("\nstopping...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_children(children)
        if redis:
            redis.stop()
        if postgres:
            postgres.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskrunner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="run the whole stack locally (embedded PostgreSQL and Redis)")
    sub.add_parser("api", help="serve the GraphQL API (uvicorn)")
    sub.add_parser("worker", help="run an arq worker")
    sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    export = sub.add_parser("export-schema", help="write schema.graphql from the code")
    export.add_argument("-o", "--output", help="file to write, '-' for stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "export-schema":
            return cmd_export_schema(args.output)
        settings = load_settings()
    except ConfigError as exc:
        print(f"taskrunner: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    commands = {"dev": cmd_dev, "api": cmd_api, "worker": cmd_worker, "migrate": cmd_migrate}
    try:
        return commands[args.command](settings)
    except ConfigError as exc:
        print(f"taskrunner: {exc}", file=sys.stderr)
        return 2
