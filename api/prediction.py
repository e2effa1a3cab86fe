"""Prediction with a job's best checkpoint (POST /jobs/{id}/predict): the body its task needs, the
checkpoint to use, and the cached Predictor's answer."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.caches import PredictorCache
from api.errors import ProblemError
from api.schemas import GenerationPublic, PredictionsPublic, PredictRequest, TextOutputPublic
from core.db.models import Checkpoint, Job


def require_input(job: Job, body: PredictRequest) -> None:
    """A 422 when the body lacks what the job's task predicts from: texts, or a prompt."""
    task = (job.config or {}).get("task")
    if task in ("classification", "text_to_text") and body.texts is None:
        name = task.replace("_", " ")
        raise ProblemError(
            422,
            f'this is a {name} job: send {{"texts": [...]}}',
            code="validation_error",
            errors=[{"loc": ["body", "texts"], "msg": f"field required for {name}", "type": "missing"}],
        )
    if task == "language_modeling" and body.prompt is None:
        raise ProblemError(
            422,
            'this is a language-modelling job: send {"prompt": ...}',
            code="validation_error",
            errors=[
                {"loc": ["body", "prompt"], "msg": "field required for language modelling", "type": "missing"}
            ],
        )


def best_checkpoint(session: Session, job: Job) -> Checkpoint:
    """The best checkpoint (the latest when none is marked best), or a 409 before the first one."""
    c = session.scalar(
        select(Checkpoint)
        .where(Checkpoint.job_id == job.id)
        .order_by(Checkpoint.is_best.desc(), Checkpoint.step.desc())
        .limit(1)
    )
    if c is None:
        raise ProblemError(
            409,
            f"job {job.id} ({job.status}) has no checkpoint yet; predict after its first evaluation",
            code="no_checkpoint",
        )
    return c


def predict_with(
    predictors: PredictorCache, directory: Path, checkpoint: str, body: PredictRequest
) -> PredictionsPublic | GenerationPublic:
    """Classify ``body.texts`` (text to text: turn them into outputs) or continue ``body.prompt`` with the checkpoint in ``directory``; a 409 when
    it was pruned while loading."""
    try:
        predictor = predictors.get(str(directory))
        if body.texts is not None and predictor.task == "text_to_text":
            outputs = predictor.text_to_text(
                body.texts,
                beam_size=body.beam_size,
                length_penalty=body.length_penalty,
                max_new_tokens=body.max_new_tokens,
            )
            return PredictionsPublic(data=[TextOutputPublic(text=t) for t in outputs], checkpoint=checkpoint)
        if body.texts is not None:
            results = predictor.classify(body.texts)
            return PredictionsPublic(data=results, checkpoint=checkpoint)
        text = predictor.generate(
            body.prompt or "",
            max_new_tokens=body.max_new_tokens,
            temperature=body.temperature,
            top_k=body.top_k,
            seed=body.seed,
        )
        return GenerationPublic(text=text, checkpoint=checkpoint)
    except FileNotFoundError:
        raise ProblemError(
            409, f"checkpoint {checkpoint} was pruned while loading; retry", code="checkpoint_missing"
        ) from None
