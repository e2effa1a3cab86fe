"""Alembic environment: the models' metadata and the URL from core.settings (or the caller's config).

SQLite gets ``render_as_batch`` (it cannot ALTER most things in place). No logging config is loaded here:
``fileConfig`` would disable the loggers of a process that migrates in-process (``jobformer up``, tests).
"""

from __future__ import annotations

from alembic import context

from core.db.models import Base, UTCDateTime
from core.db.session import make_engine, normalize_url
from core.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return normalize_url(config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url)


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    # Migrations must not import the app: render the UTC decorator as the column type it stores.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _options(url: str) -> dict:
    return {
        "target_metadata": target_metadata,
        "render_as_batch": url.startswith("sqlite"),
        "compare_type": True,
        "render_item": _render_item,
    }


def run_migrations_offline() -> None:
    url = _url()
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **_options(url))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = _url()
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, **_options(url))
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
