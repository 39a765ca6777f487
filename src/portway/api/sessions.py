"""Chat history: POST/GET /v1/sessions, GET/DELETE /v1/sessions/{id} (services/history.py).

Every route authenticates; a session belongs to the principal that created it (or whose completion named
it first), and anybody else's session id is a 404, as if it did not exist. A session's messages are paged,
oldest first, by exactly one of: `after=<position>` (the messages after it), `before=<position>` (the
`limit` messages right before it: "load older"), or `offset=<n>` (skip n from the start; the default, 0).
`has_more` says whether more follow in that direction. Positions count from 1.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from portway.api.common import authenticate, json_response, runtime
from portway.errors import ValidationError
from portway.identity.auth import Principal
from portway.services.history import HistoryService
from portway.stores.sql.sessions import TITLE_LENGTH, MessageRow, SessionRow

router = APIRouter(tags=["sessions"])

_MAX_POSITION = 2**31 - 1
Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Position = Annotated[int | None, Query(ge=0, le=_MAX_POSITION, description="a message position")]
# A dependency, so that authentication comes before the query and body are checked (401 before 400).
Caller = Annotated[Principal, Depends(authenticate)]
Offset = Annotated[int | None, Query(ge=0, le=_MAX_POSITION, description="items to skip")]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="your own id (1-64 of A-Za-z0-9_.:-); default: generated")
    title: str | None = Field(None, max_length=TITLE_LENGTH)
    metadata: dict[str, Any] | None = Field(None, description="any JSON object, kept with the session")


def _history(request: Request) -> HistoryService:
    return runtime(request).history


def session_json(row: SessionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "chat.session",
        "title": row.title,
        "metadata": row.metadata,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "message_count": row.message_count,
    }


def message_json(row: MessageRow) -> dict[str, Any]:
    return {**row.message, "position": row.position, "created_at": row.created_at}


@router.post("/v1/sessions", status_code=201, summary="Create a chat session (yours again if the id is)")
async def create_session(request: Request, principal: Caller, body: SessionCreate | None = None) -> Response:
    body = body or SessionCreate()
    row, created = await _history(request).create(principal.id, body.id, body.title, body.metadata)
    return json_response(session_json(row), status=201 if created else 200)


@router.get("/v1/sessions", summary="List your chat sessions, most recently updated first")
async def list_sessions(
    request: Request, principal: Caller, limit: Limit = 50, offset: Offset = None
) -> Response:
    rows, more = await _history(request).list_sessions(principal.id, limit, offset or 0)
    return json_response({"object": "list", "data": [session_json(r) for r in rows], "has_more": more})


@router.get("/v1/sessions/{session_id}", summary="A chat session with one page of its messages")
async def get_session(
    session_id: str,
    request: Request,
    principal: Caller,
    limit: Limit = 100,
    after: Position = None,
    before: Position = None,
    offset: Offset = None,
) -> Response:
    if sum(p is not None for p in (after, before, offset)) > 1:
        raise ValidationError("Page by one of after, before or offset", param="after")
    row, page, more = await _history(request).get(
        principal.id, session_id, limit, offset or 0, after=after, before=before
    )
    return json_response({**session_json(row), "messages": [message_json(m) for m in page], "has_more": more})


@router.delete("/v1/sessions/{session_id}", summary="Delete a chat session and its messages")
async def delete_session(session_id: str, request: Request, principal: Caller) -> Response:
    await _history(request).delete(principal.id, session_id)
    return json_response({"id": session_id, "object": "chat.session.deleted", "deleted": True})
