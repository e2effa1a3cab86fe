"""The OpenAPI document behind /docs: every operation documents an example and its problem answers."""

from __future__ import annotations

from api.main import app

SCHEMA = app.openapi()
COMPONENTS = SCHEMA["components"]["schemas"]


def _has_example(schema: dict | None) -> bool:
    if not schema:
        return False
    if "$ref" in schema:
        return _has_example(COMPONENTS[schema["$ref"].rsplit("/", 1)[1]])
    if "anyOf" in schema:
        return any(_has_example(s) for s in schema["anyOf"])
    return "examples" in schema or "example" in schema


def test_every_operation_has_a_worked_example():
    missing = []
    for path, operations in SCHEMA["paths"].items():
        for method, op in operations.items():
            ok = next(code for code in op["responses"] if code.startswith("2"))
            content = op["responses"][ok].get("content", {})
            examples = [_has_example(c.get("schema")) or "example" in c for c in content.values()]
            body = op.get("requestBody", {}).get("content", {})
            examples += [_has_example(c.get("schema")) or "example" in c for c in body.values()]
            params = [p for p in op.get("parameters", []) if p["in"] == "path"]
            examples += [_has_example(p.get("schema")) or "examples" in p for p in params]
            binary_or_empty = ok == "204" or "application/gzip" in content
            if not all(examples) or (not examples and not binary_or_empty):
                missing.append(f"{method.upper()} {path}")
    assert missing == []


def test_problem_answers_are_documented_as_problem_json():
    op = SCHEMA["paths"]["/jobs"]["post"]
    assert set(op["responses"]) >= {"202", "401", "413", "415", "422", "429"}
    example = op["responses"]["422"]["content"]["application/problem+json"]["example"]
    assert example["errors"][0]["loc"] == ["config", "text_column"]
    assert SCHEMA["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_docs_page_is_served(client):
    r = client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
