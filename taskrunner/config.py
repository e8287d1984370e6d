"""Settings read once from the environment (or `.env`); a bad value stops start-up."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskrunner.errors import ConfigError

QUEUE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
ORIGIN = re.compile(r"^https?://(\[[0-9a-f:.]+\]|[^/\s:\[\]]+)(:\d{1,5})?$", re.IGNORECASE)
QUEUE_NAME_RULE = "1 to 63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit"


class Settings(BaseSettings):
    """Every knob of the service. Names follow the seeds (see README's table)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://user:pass@host:port/db). "
        "Unset: `taskrunner dev` starts an embedded server.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (redis://host:port/0). "
        "Unset: `taskrunner dev` starts an embedded one.",
    )
    data_dir: Path = Field(
        default=Path(".taskrunner"),
        description="Where `taskrunner dev` keeps the embedded servers' data.",
    )
    db_pool_size: int = Field(
        default=20,
        ge=1,
        description="Connections each api or worker process keeps open to PostgreSQL.",
    )
    db_max_overflow: int | None = Field(
        default=None,
        ge=0,
        description="Connections a process may open beyond DB_POOL_SIZE in a burst (closed "
        "when returned). Unset: a quarter of DB_POOL_SIZE, at least 2.",
    )
    allowed_origins: str = Field(
        default="",
        description="Web pages of other origins that may call the api from a browser, "
        "comma-separated scheme://host[:port] (e.g. http://localhost:5173), or * for any: "
        "CORS over HTTP, and the Origin check of websockets and SSE. Unset: only pages the "
        "api serves itself.",
    )
    host: str = Field(default="127.0.0.1", description="Address the api binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the api binds.")
    task_max_runtime_seconds: int = Field(
        default=3600, gt=0, description="Upper bound of any task's run time (and of `sleep`)."
    )
    task_default_timeout_seconds: int = Field(
        default=300, gt=0, description="Timeout of a task submitted without `timeoutSeconds`."
    )
    max_batch_size: int = Field(default=100, gt=0, description="Most tasks in one `submitTasks`.")
    worker_concurrency: int = Field(default=50, gt=0, description="Tasks one worker runs at once.")
    worker_processes: int = Field(
        default=2,
        gt=0,
        description="Child processes a worker keeps for process tasks (a plain `def run`, or "
        "`PROCESS = True`): at most this many of them run at once on one worker.",
    )
    worker_block_warn_seconds: float = Field(
        default=1.0,
        gt=0,
        description="A worker's event loop blocked longer than this (an async task body that "
        "does not yield) is logged as event_loop_blocked with the task's id, and counted.",
    )
    task_kill_grace_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long a process task's child has to end after SIGTERM (its timeout, a "
        "cancel) before it gets SIGKILL.",
    )
    worker_poll_delay_seconds: float = Field(
        default=0.05,
        gt=0,
        description="How often a worker started with the arq CLI polls the queue (its start "
        "latency; lower costs idle CPU).",
    )
    worker_idle_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often a `taskrunner worker` polls a queue that nothing was enqueued "
        "on (enqueues wake it up at once).",
    )
    stream_quiet_seconds: float = Field(
        default=3.0,
        gt=0,
        description="A live stream re-reads PostgreSQL after this long without a message.",
    )
    worker_shutdown_grace_seconds: int = Field(
        default=10,
        ge=0,
        description="On SIGTERM a worker takes no new task and lets running ones finish this "
        "long; the rest go back to the queue.",
    )
    heartbeat_interval_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often a worker reports it is alive; silent for 5 intervals, its "
        "running tasks are recovered.",
    )
    scheduler_interval_seconds: float = Field(
        default=0.25, gt=0, description="How often workers enqueue tasks that became due."
    )
    reconcile_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often one worker re-enqueues tasks Redis lost and recovers tasks of "
        "dead workers.",
    )
    worker_write_retry_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long a worker retries, with backoff, the writes of an attempt "
        "(its start, progress and lines, its final status) while PostgreSQL cannot be "
        "reached; longer than a restart. Past it the reconciler recovers the task.",
    )
    hook_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long a task module's on_success, on_failure or on_retry hook may "
        "run; past it, it is cancelled and logged. A hook its worker died before running "
        "is run by another worker twice this long after.",
    )
    max_subscriptions_per_connection: int = Field(
        default=100, gt=0, description="Subscriptions one websocket connection may hold open."
    )
    max_subscriptions_per_key: int = Field(
        default=1000,
        gt=0,
        description="Subscriptions one API key may hold open at once, over all its websockets "
        "and Server-Sent Events streams on every api replica (counted in Redis).",
    )
    subscription_lease_seconds: float = Field(
        default=30.0,
        ge=1,
        description="How long the open subscriptions of an api replica that died without "
        "closing them still count against MAX_SUBSCRIPTIONS_PER_KEY; a live replica renews "
        "its own every third of this.",
    )
    ws_connection_init_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="A websocket that has not sent `connection_init` this long after it "
        "opened is closed (code 4408).",
    )
    auth_disabled: bool = Field(
        default=False,
        description="Serve without API keys: every caller is one anonymous owner. For local "
        "experiments only; logged as a warning at start.",
    )
    dev_api_key: SecretStr | None = Field(
        default=None,
        description="Set by `taskrunner dev` to its development key: on a loopback HOST, "
        "GraphiQL and the dashboard come authorised with it (no pasting). Leave unset "
        "elsewhere.",
    )
    auth_recheck_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often each api process looks for revoked keys (refusing them and "
        "closing their websockets).",
    )
    tasks_per_minute: int = Field(
        default=600,
        ge=0,
        description="Tasks one API key may submit per minute, across all api replicas (a "
        "batch counts each task); 0: no limit.",
    )
    task_max_memory_mb: int = Field(
        default=1024,
        gt=0,
        description="Memory one task may add to its worker process while it runs; past it the "
        "task ends FAILED with LIMIT_EXCEEDED.",
    )
    memory_check_interval_seconds: float = Field(
        default=0.5, gt=0, description="How often a worker samples its memory for the budget."
    )
    max_task_input_bytes: int = Field(
        default=65536, gt=0, description="Largest input of one task, as JSON (bytes)."
    )
    task_max_retries: int = Field(
        default=100, ge=0, description="Highest `maxRetries` a task may be submitted with."
    )
    max_labels_per_task: int = Field(
        default=20, ge=0, description="Most labels one task may carry."
    )
    max_label_length: int = Field(
        default=200, gt=0, description="Longest label of a task (characters)."
    )
    max_idempotency_key_length: int = Field(
        default=200, gt=0, description="Longest `idempotencyKey` of a task (characters)."
    )
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        gt=0,
        description="Largest GraphQL request body or websocket message (bytes).",
    )
    max_query_depth: int = Field(
        default=10, gt=0, description="Deepest field nesting a GraphQL operation may have."
    )
    max_query_aliases: int = Field(
        default=30, gt=0, description="Most aliases in one GraphQL operation."
    )
    max_query_tokens: int = Field(
        default=10000, gt=0, description="Most tokens in one GraphQL document."
    )
    max_query_cost: int = Field(
        default=10000,
        gt=0,
        description="Largest cost of one GraphQL operation, refused before it runs: each "
        "selected field counts 1 for every item of every list it is read under; a list counts "
        "its `first` (given or default; MAX_PAGE_SIZE when null), a connection's `first` sizes "
        "its edges, a list without `first` counts 10; introspection counts 0.",
    )
    max_page_size: int = Field(
        default=100,
        ge=20,
        description="Most items of one page (`tasks(first)`, `Task.events(first)`), and the "
        "page `Task.events` reads without `first`; at least 20 (the default page of `tasks`).",
    )
    minio_endpoint: str | None = Field(
        default=None,
        description="host:port of MinIO or another S3 service for artifacts. Unset: files "
        "under DATA_DIR/artifacts.",
    )
    minio_access_key: str = Field(default="minioadmin", description="S3 access key.")
    minio_secret_key: SecretStr = Field(
        default=SecretStr("minioadmin"), description="S3 secret key."
    )
    minio_bucket: str = Field(
        default="taskrunner", description="Bucket for artifacts (created when missing)."
    )
    minio_secure: bool = Field(
        default=False,
        # MINIO_USE_SSL: seed 000's name for it
        validation_alias=AliasChoices("minio_secure", "minio_use_ssl"),
        description="Talk to MINIO_ENDPOINT over HTTPS (also read as MINIO_USE_SSL).",
    )
    minio_region: str = Field(default="us-east-1", description="The bucket's region.")
    task_max_artifact_mb: float = Field(
        default=100, gt=0, description="Largest artifact a task or client may store (MB)."
    )
    artifact_retention_days: float = Field(
        default=30, gt=0, description="Artifacts older than this are deleted (bytes and rows)."
    )
    task_retention_days: float = Field(
        default=0,
        description="Finished tasks (with their events and artifacts) and finished workflows "
        "older than this many days are deleted by the workers, in batches; 0 keeps them "
        "forever.",
    )
    idempotency_key_ttl_hours: float = Field(
        default=0,
        description="An idempotencyKey returns its first task (or workflow) for this many "
        "hours after that was submitted; after it, a submission with the key makes a new one. "
        "0: for as long as the first one is kept.",
    )
    artifact_url_ttl_seconds: int = Field(
        default=3600, gt=0, description="How long an artifact's download URL stays valid."
    )
    artifact_upload_ttl_seconds: int = Field(
        default=3600,
        gt=0,
        description="How long the PUT URL of createArtifactUpload stays valid; an upload not "
        "completed within twice that expires, and the workers delete it with its bytes.",
    )
    max_artifacts_per_task: int = Field(
        default=100,
        gt=0,
        description="Most artifacts one task may have (open uploads count; its task.log files "
        "do not).",
    )
    owner_max_artifact_mb: float = Field(
        default=10240,
        gt=0,
        description="Most artifact bytes one owner may keep (MB), open uploads counting at what "
        "they may still grow to; task.log files count but are never refused.",
    )
    artifact_signing_key: SecretStr | None = Field(
        default=None,
        description="Key that signs local artifact URLs; give every api replica the same one. "
        "Unset: `taskrunner dev` makes one in DATA_DIR.",
    )
    fetch_domain_allowlist: str = Field(
        default="*",
        description="Hosts webScrape may fetch: comma-separated glob patterns; `*` allows any "
        "public host. A name resolving to a private address needs a pattern other than `*` "
        "matching it; to a loopback, link-local or cloud-metadata address, an entry without "
        "wildcards that is the host itself or that address.",
    )
    webhook_allowlist: str = Field(
        default="*",
        description="Hosts completion webhooks may be POSTed to, as FETCH_DOMAIN_ALLOWLIST: "
        "glob patterns, `*` any public host; a private address needs a pattern other than `*` "
        "naming it, a loopback or link-local one an entry that is the host or the address.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signs the webhooks of tasks whose key has no webhook secret of its own "
        "(AUTH_DISABLED, keys made before webhooks). Unset: such tasks may not ask for one.",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Longest one webhook POST may take, resolving and connecting included; "
        "past it the attempt fails and is retried.",
    )
    webhook_max_attempts: int = Field(
        default=8,
        ge=1,
        le=50,
        description="Attempts of one webhook delivery before it is given up.",
    )
    webhook_retry_base_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Wait before a webhook's second attempt; each later one waits 3 times "
        "longer (at most WEBHOOK_RETRY_MAX_SECONDS), each wait jittered by +-25%.",
    )
    webhook_retry_max_seconds: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="Longest wait between two attempts of a webhook delivery.",
    )
    webhook_concurrency: int = Field(
        default=10,
        ge=1,
        description="Webhook POSTs one worker makes at once (beside its tasks, never in a "
        "task's slot).",
    )
    webhook_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        description="How often a worker looks for due webhook deliveries.",
    )
    brave_api_key: SecretStr | None = Field(
        default=None, description="Brave Search API key for the `search` task type."
    )
    brave_api_url: str = Field(
        default="https://api.search.brave.com/res/v1",
        description="Base URL of the Brave Search API (point it at another host to test).",
    )
    search_source_allowlist: str = Field(
        default="brave",
        description="Comma-separated search providers (sources) `search` may query: brave. "
        "Brave's verticals (web, news, videos) are chosen per search, in `verticals`.",
    )
    search_cache_ttl_seconds: int = Field(
        default=3600, ge=0, description="How long identical searches are answered from Redis."
    )
    search_max_results: int = Field(
        default=20, gt=0, le=200, description="Most results one `search` returns."
    )
    taskrunner_task_modules: str = Field(
        default="",
        description="Comma-separated packages of your own task types (modules with NAME, "
        "Input and run), added to the built-in ones.",
    )
    queue_name: str = Field(
        default="taskrunner:queue",
        description="arq queue of the `default` named queue (a Redis key); another named "
        "queue is `<QUEUE_NAME>:<name>`.",
    )
    worker_queues: str = Field(
        default="",
        description="Comma-separated named queues a worker serves (`taskrunner worker "
        "--queues` overrides it). Empty: `default` and every queue a task type declares. "
        "Under the arq CLI: one queue per process.",
    )
    worker_queues_strict: bool = Field(
        default=False,
        description="Refuse `options.queue` names that are not `default`, a task type's "
        "queue, listed in WORKER_QUEUES, or served by a live worker (catches typos).",
    )
    max_schedules_per_owner: int = Field(
        default=100, ge=1, description="Most schedules one owner may have."
    )
    schedule_max_catchup: int = Field(
        default=100,
        ge=1,
        description="Most missed ticks a schedule with `catchup: ALL` fires after downtime.",
    )
    schedule_interval_seconds: float = Field(
        default=0.5,
        gt=0,
        description="Longest a worker sleeps between looks for due schedules (it wakes for the "
        "next due tick sooner).",
    )
    max_bulk_action: int = Field(
        default=1000,
        ge=1,
        description="Most tasks one cancelTasks or retryTasks call may change.",
    )
    max_workflow_steps: int = Field(
        default=1000,
        ge=1,
        description="Most steps one workflow may have (submitWorkflow).",
    )
    log_level: str = Field(default="INFO", description="Log level of every process.")
    log_format: str = Field(
        default="json",
        description="`json` (one JSON object a line, for log pipelines) or `console` (text for "
        "people; `taskrunner dev` uses it).",
    )
    worker_metrics_port: int = Field(
        default=9100,
        ge=0,
        le=65535,
        description="Port of each worker's Prometheus /metrics (bound on HOST); 0: none.",
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP endpoint for OpenTelemetry traces (e.g. http://jaeger:4318). "
        "Unset: no trace is exported.",
    )
    test_crash_after_commit: bool = Field(
        default=False,
        description="For fault tests only: the api process exits right after committing a "
        "submission, before enqueueing it (the reconciler must still run the task).",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (e.g. postgresql://u:p@127.0.0.1/db)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis:// (e.g. redis://127.0.0.1:6379/0)")
        return value

    @field_validator("task_retention_days", "idempotency_key_ttl_hours")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if not value >= 0 or value == float("inf"):  # also NaN
            raise ValueError("give a finite number >= 0 (0 turns it off: keep forever)")
        return value

    def task_retention(self) -> timedelta | None:
        """TASK_RETENTION_DAYS as a period (None: keep forever)."""
        return timedelta(days=self.task_retention_days) if self.task_retention_days else None

    def idempotency_key_ttl(self) -> timedelta | None:
        """IDEMPOTENCY_KEY_TTL_HOURS as a period (None: a key lasts as long as its task)."""
        hours = self.idempotency_key_ttl_hours
        return timedelta(hours=hours) if hours else None

    @field_validator("worker_queues")
    @classmethod
    def _queues(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        for name in names:
            if not QUEUE_NAME.match(name):
                raise ValueError(f"{name!r} is not a queue name: use {QUEUE_NAME_RULE}")
        return ",".join(dict.fromkeys(names))

    def queues(self) -> list[str]:
        """WORKER_QUEUES as a list (empty: not set)."""
        return [n for n in self.worker_queues.split(",") if n]

    @field_validator("log_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value.lower() not in {"json", "console"}:
            raise ValueError("must be json or console")
        return value.lower()

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for entry in (o.strip().rstrip("/") for o in value.split(",")):
            if entry and entry != "*" and not ORIGIN.match(entry):
                raise ValueError(
                    f"{entry!r} is not an origin: give scheme://host[:port] with no path, "
                    "e.g. http://localhost:5173, comma-separated, or * for any"
                )
        return value

    @field_validator("search_source_allowlist")
    @classmethod
    def _search_providers(cls, value: str) -> str:
        from taskrunner.search import PROVIDERS, known_verticals

        names = list(dict.fromkeys(n.strip().lower() for n in value.split(",") if n.strip()))
        for name in names:
            if name in PROVIDERS:
                continue
            if name in known_verticals():
                raise ValueError(
                    f"{name!r} is a vertical, not a search provider: list providers here "
                    f"(e.g. {','.join(PROVIDERS)}); each search names its verticals in its "
                    "`verticals` field"
                )
            raise ValueError(f"{name!r} is not a search provider: use {', '.join(PROVIDERS)}")
        return ",".join(names)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set: set it, or start with `taskrunner dev`")
        return self.database_url

    def allowed_origin_list(self) -> list[str]:
        """ALLOWED_ORIGINS as a list, each lower-cased without a trailing slash."""
        return [o.strip().rstrip("/").lower() for o in self.allowed_origins.split(",") if o.strip()]

    def on_loopback(self) -> bool:
        """Whether HOST is a loopback address: only this machine reaches the api."""
        host = self.host.strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError("REDIS_URL is not set: set it, or start with `taskrunner dev`")
        return self.redis_url


# Values never echoed in a configuration error: keys, secrets, passwords, tokens.
SECRET_NAME = re.compile(r"(^|_)(KEY|SECRET|PASSWORD|TOKEN)(_|$)")


def _shown(name: str, value: object) -> str:
    """What a configuration error may say of a bad value: the value itself, except for a
    secret (hidden) or a URL's password (masked), which would end up in logs and CI output."""
    field = Settings.model_fields.get(name.lower())
    secret_type = field is not None and "SecretStr" in str(field.annotation)
    if secret_type or SECRET_NAME.search(name):
        return "(the value is not shown: it is a secret)"
    if isinstance(value, str) and "@" in value:  # user:password@host: keep only the host
        credentials, _, host = value.rpartition("@")
        scheme = credentials.split("://", 1)[0] + "://" if "://" in credentials else ""
        value = f"{scheme}***@{host}"
    return f"(got {value!r})"


ENV_EXAMPLE_HEADER = """\
# Every setting of taskrunner with its default, commented out. Copy this file to .env (read
# by `make dev`, the api, the worker and the CLI; the environment wins over it) and
# uncomment what you change. The README's Configuration table says more.
# Generated by `make schema` (taskrunner export-schema) from taskrunner/config.py.
"""


def env_example() -> str:
    """The text of .env.example: each setting's description, then `# NAME=default`."""
    import textwrap

    from pydantic_core import PydanticUndefined

    parts = [ENV_EXAMPLE_HEADER]
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is PydanticUndefined and field.default_factory is not None:
            default = field.default_factory()  # type: ignore[call-arg]
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        value = (
            ""
            if default is None
            else str(default).lower()
            if isinstance(default, bool)
            else str(default)
        )
        about = textwrap.wrap(field.description or "", width=86)
        parts.append("\n".join(f"# {line}" for line in about) + f"\n# {name.upper()}={value}\n")
    return "\n".join(parts)


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation failure into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{name}: {err['msg']} {_shown(name, err.get('input'))}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return load_settings()
