"""Live updates of one job as server-sent events (docs/design.md, "Live updates").

The route checks the key and the owner like ``GET /jobs/{id}``, answers the job's view as its snapshot and
hands the connection to the job's reader (api/streams.py). The snapshot comes from the job answer cache, as
``GET /jobs/{id}``'s does (api/jobviews.py): many watchers opening their streams at once cost one read of
the job, and a stream holds no session and no thread while it waits.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi import Path as PathParam
from sse_starlette import EventSourceResponse

from api.deps import ID_PATTERN, OwnerDep
from api.errors import ProblemError, problem_responses
from api.jobviews import visible_answer
from api.streams import BadCursor, Cursor, StreamHub

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[
    str, PathParam(pattern=ID_PATTERN, description="A job id.", examples=["3f2a9c1e5b7d4e0f8a6b2c4d1e3f5a7b"])
]
LastEventId = Annotated[
    str | None,
    Header(
        description="Resume after this cursor (`<metric_id>:<event_id>`, the `id:` of the last message seen).",
        examples=["120:7"],
    ),
]
# A comment line this often keeps proxies from closing an idle stream.
HEARTBEAT_SECONDS = 15

STREAM_DESCRIPTION = (
    "Server-sent events (`text/event-stream`): `snapshot` (the job, first), `metrics` (new points), "
    "`event` (new job events), `progress` (status, progress, latest metrics) and `end` (the final job; the "
    "stream then closes). `metrics` and `event` carry `id: <metric_id>:<event_id>`; reconnect with "
    "`Last-Event-ID` to resume with no gap and no duplicate. Without it the stream starts with every point "
    "and event so far. A comment heartbeat every 15 s."
)


@router.get(
    "/{job_id}/stream",
    summary="Follow a job live (server-sent events)",
    description=STREAM_DESCRIPTION,
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "An event stream until the job ends",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'event: snapshot\ndata: {"id": "...", "status": "running", ...}\n\n'
                    'event: metrics\nid: 12:3\ndata: {"points": [{"step": 10, "split": "train", ...}]}\n\n',
                }
            },
        },
        **problem_responses(401, 404, 422),
    },
)
async def stream_job(
    job_id: JobId,
    request: Request,
    owner: OwnerDep,
    last_event_id: LastEventId = None,
) -> EventSourceResponse:
    try:
        since = Cursor.parse(last_event_id)
    except BadCursor:
        raise ProblemError(
            422,
            "header Last-Event-ID must be '<metric_id>:<event_id>' (two whole numbers), as sent in the "
            "stream's 'id:' lines; leave it out to start from the beginning",
            code="bad_last_event_id",
        ) from None
    answer = await visible_answer(request, job_id, owner)
    hub: StreamHub = request.app.state.streams
    return EventSourceResponse(
        hub.follow(job_id, answer.view, since), ping=HEARTBEAT_SECONDS, headers={"Cache-Control": "no-cache"}
    )
