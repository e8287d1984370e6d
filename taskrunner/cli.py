"""`taskrunner`: dev (the whole stack on one machine), api, worker, migrate, keys,
export-schema."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from taskrunner.config import Settings, env_example, load_settings
from taskrunner.errors import ConfigError
from taskrunner.logs import configure_logging
from taskrunner.supervisor import (
    Stop,
    Supervised,
    raise_stop,
    require_free_port,
    stop_children,
    wait_ready,
)

DEV_DATABASE_FILE = "dev-database-url"
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema.graphql"
ENV_EXAMPLE_FILE = SCHEMA_FILE.with_name(".env.example")
# the console, as `make dashboard` builds it (and the api serves it at /dashboard/)
DASHBOARD_INDEX = (
    Path(__file__).resolve().parent.parent
    / "frontend-examples"
    / "dashboard"
    / "dist"
    / "index.html"
)


def cmd_api(settings: Settings) -> int:
    import uvicorn

    from api.app import uvicorn_options

    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # ours (taskrunner.logs): one format for every process
        **uvicorn_options(settings),
    )
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    """keys create NAME [--owner O] [--admin] [--webhook-url URL] | keys list | keys revoke
    NAME | keys set-webhook NAME (--url URL | --clear) [--new-secret]"""
    from taskrunner import keys
    from taskrunner.db import create_engine
    from taskrunner.errors import BadInput, TaskrunnerError
    from taskrunner.options import webhook_url

    database_url = settings.database_url or _running_dev_database(settings.data_dir)

    async def run() -> int:
        engine = create_engine(database_url, pool_size=1)
        try:
            if args.keys_command == "create":
                url = webhook_url(args.webhook_url, settings, "--webhook-url")
                row, secret = await keys.create(
                    engine, name=args.name, owner=args.owner, admin=args.admin, webhook_url=url
                )
                role = "admin key" if row.admin else f"key of owner {row.owner!r}"
                print(f"created {role} {row.name!r}; it is shown only this once:", file=sys.stderr)
                print(secret)
                print(
                    "its webhook secret (signs its tasks' webhooks), shown only this once:",
                    file=sys.stderr,
                )
                print(row.webhook_secret)
            elif args.keys_command == "set-webhook":
                url = None if args.clear else webhook_url(args.url, settings, "--url")
                if url is None and not args.clear:
                    raise BadInput("give --url URL, or --clear", field="--url")
                row, made = await keys.set_webhook(
                    engine, args.name, url=url, new_secret=args.new_secret
                )
                print(f"{row.name!r}: default webhook {row.webhook_url or 'none'}", file=sys.stderr)
                if made is not None:
                    print("its new webhook secret, shown only this once:", file=sys.stderr)
                    print(made)
            elif args.keys_command == "revoke":
                row = await keys.revoke(engine, args.name)
                print(f"revoked {row.name!r} (at {row.revoked_at:%Y-%m-%d %H:%M:%S %Z})")
            else:
                print(
                    f"{'NAME':<24} {'OWNER':<24} {'ROLE':<6} {'PREFIX':<12} {'CREATED':<20} REVOKED"
                )
                for row in await keys.list_keys(engine):
                    revoked = f"{row.revoked_at:%Y-%m-%d %H:%M:%S}" if row.revoked_at else "-"
                    print(
                        f"{row.name:<24} {row.owner:<24} {'admin' if row.admin else 'user':<6} "
                        f"{row.prefix + '…':<12} {row.created_at:%Y-%m-%d %H:%M:%S}  {revoked}"
                    )
            return 0
        except TaskrunnerError as exc:
            print(f"taskrunner keys: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _running_dev_database(data: Path) -> str:
    """The database of a `taskrunner dev` running on DATA_DIR (it leaves its URL there)."""
    path = data / DEV_DATABASE_FILE
    if not path.exists():
        raise ConfigError(
            "DATABASE_URL is not set and no `make dev` is running here: set DATABASE_URL, "
            "or start `make dev` first"
        )
    return path.read_text().strip()


def dev_key(database_url: str, data: Path) -> str:
    """The development key: made on the first `taskrunner dev` and kept (0600) in DATA_DIR,
    since only its hash is in the database."""
    from taskrunner import keys
    from taskrunner.db import create_engine

    path = data / "dev-api-key"
    if path.exists():
        return path.read_text().strip()

    async def create() -> str:
        engine = create_engine(database_url, pool_size=1)
        try:
            existing = {k.name for k in await keys.list_keys(engine)}
            name = next(n for i in range(1000) if (n := f"dev{i or ''}") not in existing)
            _, secret = await keys.create(engine, name=name, owner="dev")
            return secret
        finally:
            await engine.dispose()

    secret = asyncio.run(create())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


def cmd_worker(settings: Settings) -> int:
    import uvloop

    from workers.settings import task_worker

    asyncio.set_event_loop(uvloop.new_event_loop())  # arq's Worker takes the current loop
    task_worker(settings).run()
    return 0


def cmd_smoke(settings: Settings, url: str | None, key: str | None, within: float) -> int:
    from taskrunner.smoke import smoke

    kept = settings.data_dir / "dev-api-key"
    key = key or os.environ.get("API_KEY") or (kept.read_text().strip() if kept.exists() else None)
    url = (url or f"http://127.0.0.1:{settings.port}").rstrip("/")
    print(f"smoke: {url}{'' if key else ' (no API key: give --key or API_KEY)'}", flush=True)
    ok = asyncio.run(smoke(url, key, within, out=lambda line: print(line, flush=True)))
    return 0 if ok else 1


def cmd_migrate(settings: Settings) -> int:
    from taskrunner.db import migrate

    migrate(settings.require_database_url())
    print("migrations applied")
    return 0


def export_schema() -> str:
    from strawberry.printer import print_schema

    from api.schema import build_schema

    return print_schema(build_schema()) + "\n"


def cmd_export_schema(output: str | None) -> int:
    text = export_schema()
    if output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(output) if output else SCHEMA_FILE
    path.write_text(text)
    print(f"wrote {path}")
    if not output:  # the other generated file of the repository
        ENV_EXAMPLE_FILE.write_text(env_example())
        print(f"wrote {ENV_EXAMPLE_FILE}")
    return 0


def cmd_dev(settings: Settings) -> int:
    """Embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set), migrations,
    one api and one worker. An api or worker that dies (a crash, the OOM killer) is started
    again with backoff, so one process never takes the stack down. Ctrl-C or SIGTERM stops
    everything this started; the data stays."""
    from taskrunner.artifacts.signing import load_or_create_key
    from taskrunner.db import migrate
    from taskrunner.embedded import EmbeddedPostgres, EmbeddedRedis

    require_free_port(settings.host, settings.port)
    signal.signal(signal.SIGTERM, raise_stop)
    # Ctrl-C stops the stack even when started from a shell that ignores SIGINT for
    # background jobs (Python would then inherit "ignore").
    signal.signal(signal.SIGINT, raise_stop)
    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    postgres = None if settings.database_url else EmbeddedPostgres(data / "postgres")
    redis = None if settings.redis_url else EmbeddedRedis(data / "redis")
    children: list[Supervised] = []
    try:
        database_url = postgres.start() if postgres else settings.require_database_url()
        redis_url = redis.start() if redis else settings.require_redis_url()
        migrate(database_url)
        (data / DEV_DATABASE_FILE).write_text(database_url + "\n")
        env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
        env.setdefault("LOG_FORMAT", "console")  # people read these; set json to pipe them
        if settings.artifact_signing_key is None:
            env["ARTIFACT_SIGNING_KEY"] = load_or_create_key(data / "signing.key").hex()
        key = None if settings.auth_disabled else dev_key(database_url, data)
        if key is not None:  # GraphiQL and the dashboard come authorised with it
            env["DEV_API_KEY"] = key
        for role in ("api", "worker"):
            children.append(Supervised(role, [sys.executable, "-m", "taskrunner", role], env=env))
            children[-1].start()
        wait_ready(f"http://127.0.0.1:{settings.port}/readyz", children, timeout=60)
        print(f"GraphiQL: http://127.0.0.1:{settings.port}/graphql", flush=True)
        if DASHBOARD_INDEX.is_file():
            print(f"Dashboard: http://127.0.0.1:{settings.port}/dashboard/", flush=True)
        else:
            print("Dashboard: not built (`make dashboard` builds it)", flush=True)
        if key is None:
            print("API key: none needed (AUTH_DISABLED=true)", flush=True)
        else:
            print(f"API key: {key}", flush=True)
            if not settings.on_loopback():  # the pages are not authorised there
                print(f'  (GraphiQL: Headers, {{"Authorization": "Bearer {key}"}})', flush=True)
        print(f"PostgreSQL: {database_url}\nRedis: {redis_url}\nCtrl-C stops.", flush=True)
        while True:  # until Ctrl-C or SIGTERM
            for child in children:
                child.check()
            time.sleep(0.2)
    except (KeyboardInterrupt, Stop):
        print("\nstopping...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut this short
        stop_children(children)
        (data / DEV_DATABASE_FILE).unlink(missing_ok=True)
        if redis:
            redis.stop()
        if postgres:
            postgres.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskrunner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="run the whole stack locally (embedded PostgreSQL and Redis)")
    sub.add_parser("api", help="serve the GraphQL API (uvicorn)")
    worker = sub.add_parser("worker", help="run an arq worker")
    worker.add_argument(
        "--queues",
        help="comma-separated named queues to serve (default: WORKER_QUEUES, or `default`)",
    )
    sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    export = sub.add_parser(
        "export-schema", help="write schema.graphql (and .env.example) from the code"
    )
    export.add_argument("-o", "--output", help="file to write, '-' for stdout")
    smoke = sub.add_parser(
        "smoke", help="check a running service end to end, one line per check (make smoke)"
    )
    smoke.add_argument("--url", help="the api (default: http://127.0.0.1:PORT)")
    smoke.add_argument(
        "--key", help="an API key (default: API_KEY, or the key `make dev` keeps in DATA_DIR)"
    )
    smoke.add_argument(
        "--within", type=float, default=30, help="seconds each check may take (default 30)"
    )
    keys_parser = sub.add_parser("keys", help="API keys: create, list, revoke, set-webhook")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a key and print it (shown only once)")
    create.add_argument("name", help="the key's name (unique), e.g. ci or alice-laptop")
    create.add_argument("--owner", help="whose tasks it acts on (default: NAME)")
    create.add_argument("--admin", action="store_true", help="sees every owner's tasks")
    create.add_argument(
        "--webhook-url", help="default webhook of the tasks it submits (options.webhookUrl)"
    )
    keys_sub.add_parser("list", help="every key: name, owner, role, prefix, dates")
    revoke = keys_sub.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("name")
    hook = keys_sub.add_parser(
        "set-webhook",
        help="set or clear a key's default webhook; prints a new webhook secret when it makes one",
    )
    hook.add_argument("name")
    hook.add_argument("--url", help="POST the final status of the tasks it submits here")
    hook.add_argument("--clear", action="store_true", help="no default webhook")
    hook.add_argument(
        "--new-secret",
        action="store_true",
        help="replace its webhook secret (a key made before webhooks gets one anyway)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "export-schema":
            return cmd_export_schema(args.output)
        overrides = {}
        if args.command == "worker" and args.queues:
            overrides["worker_queues"] = args.queues
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(f"taskrunner: {exc}", file=sys.stderr)
        return 2
    console = args.command in ("dev", "keys") and "LOG_FORMAT" not in os.environ
    configure_logging(settings.log_level, "console" if console else settings.log_format)
    commands = {"dev": cmd_dev, "api": cmd_api, "worker": cmd_worker, "migrate": cmd_migrate}
    try:
        if args.command == "keys":
            return cmd_keys(settings, args)
        if args.command == "smoke":
            return cmd_smoke(settings, args.url, args.key, args.within)
        return commands[args.command](settings)
    except ConfigError as exc:
        print(f"taskrunner: {exc}", file=sys.stderr)
        return 2
