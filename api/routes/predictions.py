"""Batch predictions of a finished job over a dataset: queue one, list them, read or cancel one (the routes
every model run has, api/run_routes.py), and download its CSV. The work is in api/model_runs.py; the run
happens on the workers (worker/runs.py)."""

from __future__ import annotations

from fastapi.responses import FileResponse

from api.deps import OwnerDep, SessionDep, SettingsDep
from api.errors import ProblemError, problem_responses
from api.model_runs import get_owned_run
from api.run_routes import Id, run_router
from core.db.models import RunKind, RunStatus

router = run_router(
    RunKind.PREDICTION,
    "predictions",
    create_summary="Predict every row of a dataset with a finished job's checkpoint",
    list_summary="A job's batch predictions",
)


@router.get(
    "/predictions/{run_id}/output",
    response_class=FileResponse,
    summary="The predictions as CSV: the input columns, predicted_label and prob_<label> (or generated_text)",
    responses={
        200: {
            "content": {
                "text/csv": {
                    "example": "text,label,predicted_label,prob_ham,prob_spam\nhi,ham,ham,0.99,0.01\n"
                }
            }
        },
        **problem_responses(401, 404, 409),
    },
)
def prediction_output(
    run_id: Id, session: SessionDep, settings: SettingsDep, owner: OwnerDep
) -> FileResponse:
    run = get_owned_run(session, run_id, owner, RunKind.PREDICTION)
    if run.status != RunStatus.SUCCEEDED or run.output_path is None:
        raise ProblemError(
            409, f"prediction {run_id} is {run.status}; its CSV comes when it succeeds", code="not_ready"
        )
    path = settings.data_dir / run.output_path
    if not path.is_file():
        raise ProblemError(404, f"the output of prediction {run_id} is no longer on disk", code="not_found")
    return FileResponse(path, media_type="text/csv", filename=f"predictions-{run_id}.csv")
