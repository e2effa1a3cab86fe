"""The one settings object read by the API, the worker, migrations and the CLI.

Every field can be set from the environment as ``JOBFORMER_<NAME>`` (for example
``JOBFORMER_DATABASE_URL``). The defaults are the embedded single-machine setup of ``jobformer up``:
SQLite and files under ``./jobformer-data``, Redis on localhost.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDERS = ("change-me", "changeme", "placeholder", "secret", "example")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOBFORMER_", extra="ignore")

    data_dir: Path = Field(Path("./jobformer-data"), description="Datasets, checkpoints and the SQLite file.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL. Default: SQLite at <data_dir>/jobformer.db."
    )
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis).")
    queue_name: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Celery queue the API sends jobs to and workers consume (one Redis can serve several).",
    )
    max_upload_mb: int = Field(200, gt=0, description="Largest accepted upload; 413 past it.")
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
    max_attempts: int = Field(3, ge=1, description="Runs a job gets before failing with worker_lost.")
    job_time_limit_seconds: float | None = Field(
        None, gt=0, description="Wall-clock limit per job (enforced inside the loop)."
    )
    visibility_timeout_seconds: int = Field(
        7 * 24 * 3600, gt=0, description="Redis visibility timeout: longer than any job."
    )
    environment: str = Field("local", description="'production' refuses placeholder secrets.")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @model_validator(mode="after")
    def _no_placeholders_in_production(self) -> Settings:
        # Compose ships a placeholder key so a first `docker compose up` works; production must not run with it.
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

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'jobformer.db').resolve()}"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"


@lru_cache
def get_settings() -> Settings:
    return Settings()
