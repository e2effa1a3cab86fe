"""The one settings object read by the API, the worker, migrations and the CLI.

Every field can be set from the environment as ``JOBFORMER_<NAME>`` (for example
``JOBFORMER_DATABASE_URL``). The defaults are the embedded single-machine setup of ``jobformer up``:
SQLite and files under ``./jobformer-data``, Redis on localhost.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core import webhooks
from core.owners import owner_of_key

PLACEHOLDERS = ("change-me", "changeme", "placeholder", "secret", "example")
QUEUE_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
# A job asking for N > 1 processes, or more memory than the plain tier, is sent to "<queue>.p<N>",
# "<queue>.m<T>" or "<queue>.p<N>.m<T>" (broker.capacity_queue): no queue of its own may look like one
# (docs/design.md, "Queues").
CAPACITY_SUFFIX = r"\.[pm][0-9]+$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOBFORMER_", extra="ignore")

    data_dir: Path = Field(Path("./jobformer-data"), description="Datasets, checkpoints and the SQLite file.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL. Default: SQLite at <data_dir>/jobformer.db."
    )
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis).")
    queue_name: str = Field(
        "default",
        pattern=QUEUE_NAME,
        description="Celery queue the API sends jobs to and workers consume (one Redis can serve several).",
    )
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated queues a job may name (`queue` in POST /jobs), e.g. 'cpu,gpu'. "
            "Empty: only queue_name. When set, it must include queue_name (the default for a job)."
        ),
    )
    max_upload_mb: int = Field(200, gt=0, description="Largest accepted upload; 413 past it.")
    max_body_mb: int = Field(
        1,
        gt=0,
        description="Largest request body but an upload (JSON configs, texts to predict); 413 past it.",
    )
    max_rows: int = Field(5_000_000, gt=0, description="Largest accepted dataset, in rows.")
    max_model_params: int = Field(500_000_000, gt=0, description="Largest model a job may ask for.")
    max_active_jobs_per_key: int = Field(8, gt=0, description="Queued + running jobs per API key (429).")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys. Empty: no auth (local use). Set: Bearer auth on all but /healthz.",
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often a running job heartbeats.")
    heartbeat_timeout_seconds: float = Field(
        60.0, gt=0, description="A running job whose heartbeat is older than this has lost its worker."
    )
    lease_seconds: float | None = Field(
        None,
        gt=0,
        description=(
            "A running job's worker stops training by itself when it could not renew its lease (heartbeat) "
            "for this long; shorter than heartbeat_timeout_seconds, so two workers never train one job at "
            "once. Default: halfway between heartbeat_seconds and heartbeat_timeout_seconds."
        ),
    )
    max_attempts: int = Field(3, ge=1, description="Runs a job gets before failing with worker_lost.")
    job_time_limit_seconds: float | None = Field(
        None, gt=0, description="Wall-clock limit per job (enforced inside the loop)."
    )
    visibility_timeout_seconds: int = Field(
        7 * 24 * 3600, gt=0, description="Redis visibility timeout: longer than any job."
    )
    environment: str = Field("local", description="'production' refuses placeholder secrets.")
    # Operators (docs/design.md, "Operators").
    metrics_token: str | None = Field(
        None,
        description=(
            "Bearer token for GET /metrics (all owners' jobs, so not a user's key). Unset: /metrics is open "
            "when the server has no API keys, and refused (403) when it has."
        ),
    )
    webhook_secret: str | None = Field(
        None,
        description="HMAC-SHA256 key signing webhook deliveries; unset: jobs may not name a webhook_url.",
    )
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated hosts webhooks may reach: names, IP addresses or CIDR networks (e.g. "
            "'hooks.example.com,10.0.0.0/8'). Empty: any host whose addresses are all public (no loopback, "
            "private, link-local or reserved ones)."
        ),
    )
    webhook_defaults: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description=(
            "A key's default webhook_url, for its jobs that name none (a job's own wins): a JSON object "
            '{"<api key>": "<url>"} or \'key=url,key=url\'. Each key must be one of api_keys; each URL '
            "passes the checks of a job's webhook_url (JOBFORMER_WEBHOOK_ALLOWED_HOSTS)."
        ),
    )
    worker_processes: int | None = Field(
        None,
        ge=1,
        le=64,
        description=(
            "Processes this worker gives one job (resources.processes it takes). Default: its GPUs, else "
            "its CPU cores."
        ),
    )
    worker_memory_gb: float | None = Field(
        None,
        gt=0,
        description=(
            "GiB of memory this worker offers each process of a job (it takes jobs whose "
            "resources.memory_gb, or estimate, fits). Default: the smallest GPU's memory (nvidia-smi), else "
            "the RAM it may use (the machine's, or its container's limit), shared by a job's processes."
        ),
    )
    log_format: str = Field(
        "text", pattern=r"^(text|json)$", description="'json': one JSON object a line, in every process."
    )

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: object) -> object:
        if isinstance(v, str):
            return [h.strip().lower() for h in v.split(",") if h.strip()]
        return v

    @field_validator("webhook_defaults", mode="before")
    @classmethod
    def _parse_defaults(cls, v: object) -> object:
        if not isinstance(v, str):
            return v
        if v.strip().startswith("{"):
            try:
                return json.loads(v)
            except ValueError as exc:
                raise ValueError(f"JOBFORMER_WEBHOOK_DEFAULTS is not valid JSON ({exc})") from None
        pairs = [item.split("=", 1) for item in v.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError("JOBFORMER_WEBHOOK_DEFAULTS: write 'key=url,key=url' or a JSON object")
        return {key.strip(): url.strip() for key, url in pairs}

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, v: object) -> object:
        if isinstance(v, str):
            return [q.strip() for q in v.split(",") if q.strip()]
        return v

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, v: list[str]) -> list[str]:
        bad = [q for q in v if not re.fullmatch(QUEUE_NAME, q)]
        if bad:
            raise ValueError(
                f"JOBFORMER_QUEUES: {', '.join(map(repr, bad))} is not a queue name (1-64 of A-Z a-z 0-9 _ . -)"
            )
        return list(dict.fromkeys(v))

    @field_validator("queue_name")
    @classmethod
    def _not_a_capacity_queue(cls, v: str) -> str:
        if re.search(CAPACITY_SUFFIX, v):
            raise ValueError(
                f"JOBFORMER_QUEUE_NAME={v!r} ends like a capacity queue ('.p<N>' or '.m<T>', where jobs "
                "asking for N processes or T GiB wait): pick a name that does not"
            )
        return v

    @model_validator(mode="after")
    def _queues_are_not_capacity_queues(self) -> Settings:
        bad = [q for q in self.queues if re.search(CAPACITY_SUFFIX, q)]
        if bad:
            raise ValueError(
                f"JOBFORMER_QUEUES: {', '.join(map(repr, bad))} ends like a capacity queue ('.p<N>' or "
                "'.m<T>', where jobs asking for N processes or T GiB wait): pick names that do not"
            )
        return self

    @model_validator(mode="after")
    def _webhook_defaults_are_usable(self) -> Settings:
        # The URLs are checked as a job's own (core/webhooks.py); host names resolve only when sent.
        if not self.webhook_defaults:
            return self
        if not self.webhook_secret:
            raise ValueError(
                "JOBFORMER_WEBHOOK_DEFAULTS needs JOBFORMER_WEBHOOK_SECRET: nothing is sent unsigned"
            )
        unknown = [k for k in self.webhook_defaults if k not in self.api_keys]
        if unknown:
            raise ValueError(
                f"JOBFORMER_WEBHOOK_DEFAULTS names {len(unknown)} key(s) that are not in JOBFORMER_API_KEYS: "
                "every key with a default must be one of the server's keys"
            )
        for url in self.webhook_defaults.values():
            try:
                webhooks.check_url(url, self.webhook_allowed_hosts, resolve=False)
                webhooks.check_literal_host(url, self.webhook_allowed_hosts)
            except webhooks.WebhookRefused as exc:
                raise ValueError(f"JOBFORMER_WEBHOOK_DEFAULTS: {url!r}: {exc}") from None
        return self

    @model_validator(mode="after")
    def _default_queue_is_configured(self) -> Settings:
        # A job without `queue` goes to queue_name; it must be one a job may name.
        if self.queues and self.queue_name not in self.queues:
            raise ValueError(
                f"JOBFORMER_QUEUE_NAME={self.queue_name!r} is not in JOBFORMER_QUEUES="
                f"{','.join(self.queues)!r}: add it there, or pick one of those"
            )
        return self

    @model_validator(mode="after")
    def _no_placeholders_in_production(self) -> Settings:
        # Production refuses keys that look like placeholders or are too short to be secret.
        if self.environment == "production":
            if not self.api_keys:
                raise ValueError("JOBFORMER_API_KEYS must be set when JOBFORMER_ENVIRONMENT=production")
            weak = [k for k in self.api_keys if len(k) < 16 or any(p in k.lower() for p in PLACEHOLDERS)]
            if weak:
                raise ValueError(
                    "JOBFORMER_API_KEYS holds a placeholder or short key (< 16 characters); set real keys, "
                    "e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
                )
        return self

    @model_validator(mode="after")
    def _lease_inside_timeout(self) -> Settings:
        # The self-fence must fire before the reaper's timeout, or a stalled worker and the job's next
        # owner could both be training (docs/design.md, "One owner per job").
        if self.lease_seconds is not None and not (
            self.heartbeat_seconds < self.lease_seconds < self.heartbeat_timeout_seconds
        ):
            raise ValueError(
                f"JOBFORMER_LEASE_SECONDS ({self.lease_seconds:g}) must be above JOBFORMER_HEARTBEAT_SECONDS "
                f"({self.heartbeat_seconds:g}) and below JOBFORMER_HEARTBEAT_TIMEOUT_SECONDS "
                f"({self.heartbeat_timeout_seconds:g})"
            )
        return self

    def webhook_default_for(self, owner: str | None) -> str | None:
        """The default webhook URL of the key whose jobs ``owner`` records (``webhook_defaults``)."""
        if owner is None or not self.webhook_defaults:
            return None
        return next((url for key, url in self.webhook_defaults.items() if owner_of_key(key) == owner), None)

    @property
    def lease_bound_seconds(self) -> float:
        """How long a worker may go without renewing its lease before it stops by itself."""
        if self.lease_seconds is not None:
            return self.lease_seconds
        return (self.heartbeat_seconds + self.heartbeat_timeout_seconds) / 2

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'jobformer.db').resolve()}"

    @property
    def allowed_queues(self) -> list[str]:
        """The queues a job may be sent to: ``queues``, or just ``queue_name`` when that is empty."""
        return list(self.queues) or [self.queue_name]

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"


@lru_cache
def get_settings() -> Settings:
    return Settings()
