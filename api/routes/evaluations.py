"""Evaluations of a finished job on a dataset: queue one, list them, read or cancel one (the routes every
model run has, api/run_routes.py). The work is in api/model_runs.py; the run happens on the workers
(worker/runs.py)."""

from __future__ import annotations

from api.run_routes import run_router
from core.db.models import RunKind

router = run_router(
    RunKind.EVALUATION,
    "evaluations",
    create_summary="Evaluate a finished job's checkpoint on a dataset",
    list_summary="A job's evaluations",
)
