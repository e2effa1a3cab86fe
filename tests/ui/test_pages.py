"""The dashboard's files (api/routes/pages.py): served at / and /ui/ without a key, nothing else made public,
nothing in the OpenAPI document, every file the page imports present (docs/design.md, "The dashboard")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.routes.pages import WEB_DIR
from core.settings import Settings

KEY = "pages-key-0123456789"


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = Settings(api_keys=[KEY], data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/x.db")
    return TestClient(create_app(settings))


def test_the_page_and_its_files_load_without_a_key(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/ui/js/app.js">' in r.text
    js = client.get("/ui/js/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert client.get("/ui/vendor/uplot/uPlot.esm.js").status_code == 200
    assert client.get("/ui/css/app.css").headers["content-type"].startswith("text/css")


def test_the_data_still_needs_the_key(client: TestClient) -> None:
    assert client.get("/jobs").status_code == 401
    # Only the files that exist are public: any other path under /ui/ is behind the gate like the rest.
    r = client.get("/ui/nothing-here.js")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert client.get("/ui/nothing-here.js", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


def test_the_config_schema_the_form_is_built_from(client: TestClient) -> None:
    schema = client.get("/ui/config-schema.json").json()
    assert schema["required"] == ["task"]
    assert schema["properties"]["task"]["enum"] == ["classification", "language_modeling", "text_to_text"]
    training = schema["$defs"]["TrainingConfig"]["properties"]
    assert training["learning_rate"]["default"] == 0.001


def test_the_pages_stay_out_of_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/ui") for p in paths)


def test_every_module_the_page_imports_is_there() -> None:
    """A missing or misspelled import would leave a blank page: resolve every relative import."""
    modules = sorted(WEB_DIR.rglob("*.js"))
    assert len(modules) >= 10
    for module in modules:
        for target in re.findall(r'from "(\.[^"]+)";', module.read_text()):
            assert (module.parent / target).resolve().is_file(), f"{module.name} imports {target}"


def test_the_chart_library_is_vendored_with_its_license_and_version() -> None:
    vendor = WEB_DIR / "vendor" / "uplot"
    assert "MIT License" in (vendor / "LICENSE").read_text()
    assert "uPlot 1.6.32" in (vendor / "VERSION").read_text()
    assert "(v1.6.32)" in (vendor / "uPlot.esm.js").read_text()[:400]
