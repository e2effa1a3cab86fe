"""Property-based requests generated from the app's own OpenAPI schema: no 5xx on any endpoint.

Valid (positive) and invalid (negative) requests for every operation, against an app with a real database
holding one dataset and one queued job. Bounded (a few examples per operation and mode) so both backends
together stay well under a minute. schemathesis' own pytest plugin (``from_fixture``) needs subtests that
this pytest version lacks, so the Hypothesis test is built per operation here.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

import api.main
from api.main import create_app

MAX_EXAMPLES = 8

# The operations, listed from the module-level app (the schema does not depend on settings).
OPERATIONS = [
    r.ok().label for r in schemathesis.openapi.from_asgi("/openapi.json", api.main.app).get_all_operations()
]


@pytest.fixture
def api_schema(settings, client, spam_csv):
    # Something to find: a dataset and a queued job, so not every id is unknown.
    d = client.post("/datasets", files={"file": ("spam.csv", spam_csv)}).json()
    client.post("/jobs", json={"dataset_id": d["id"], "config": {"task": "classification"}})
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))


def test_every_operation_is_covered():
    assert len(OPERATIONS) == 30  # + the four of /sweeps, + GET /metrics, + nine of evaluations/predictions
    assert "POST /jobs" in OPERATIONS and "POST /datasets" in OPERATIONS


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_server_errors(api_schema, label):
    operation = next(r.ok() for r in api_schema.get_all_operations() if r.ok().label == label)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis_settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        try:
            run()
        except Unsatisfiable:
            # No parameters and no body (GET /healthz): nothing to make invalid.
            assert mode == GenerationMode.NEGATIVE
