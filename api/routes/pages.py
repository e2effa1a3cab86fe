"""The dashboard: index.html at ``/``, its scripts, styles and the vendored chart library under ``/ui/``.

The pages hold no data: they are the same for everyone and load without a key; everything they show comes
from the API, called by the page with the key it asks for (docs/design.md, "The dashboard"). The files
are package data (api/web/), so a ``pip install`` ships them and nothing loads from another origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from core.ml.config import TrainConfig

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
STATIC_PREFIX = "/ui"
CONFIG_SCHEMA_PATH = f"{STATIC_PREFIX}/config-schema.json"

router = APIRouter(include_in_schema=False)

# The page is small and changes with the package: always revalidated, never served stale.
NO_CACHE = {"Cache-Control": "no-cache"}


@router.get("/")
def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=NO_CACHE)


@router.get(CONFIG_SCHEMA_PATH)
def config_schema() -> JSONResponse:
    """The training config's JSON schema: the new-job form is built from it."""
    return JSONResponse(TrainConfig.model_json_schema(), headers=NO_CACHE)


def static_files() -> StaticFiles:
    """The files under api/web/, mounted at ``STATIC_PREFIX`` by the app."""
    return StaticFiles(directory=WEB_DIR)


def public_paths() -> set[str]:
    """Every path of the dashboard: the request gate lets these through without a key. Exact paths of the
    files that exist, so nothing else under ``/ui/`` becomes public."""
    files = {
        f"{STATIC_PREFIX}/{p.relative_to(WEB_DIR).as_posix()}"
        for p in WEB_DIR.rglob("*")
        if p.is_file() and p.name != "index.html"
    }
    return {"/", CONFIG_SCHEMA_PATH, *files}
