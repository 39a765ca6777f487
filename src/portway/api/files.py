"""GET /v1/files/{id}/content: a generated file at its signed, expiring URL (no Authorization header).

The signature is the credential: a link handed out in an image's `url` answer works in a browser or an
`<img>` tag. A wrong id, signature or expiry all answer the same 403 (`permission_denied`, one message), so
a caller learns nothing about which part was wrong; a genuine URL whose file has since been swept is 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from portway.api.common import runtime
from portway.errors import NotFound, PermissionDenied

router = APIRouter(tags=["files"])
_BAD_URL = "This file URL is invalid or has expired"


@router.get("/v1/files/{file_id}/content", summary="Download a generated file (signed URL, no auth)")
async def file_content(file_id: str, request: Request) -> Response:
    files = runtime(request).files
    q = request.query_params
    if not files.verify(file_id, q.get("expires"), q.get("signature")):
        raise PermissionDenied(_BAD_URL)
    stored = await files.aget(file_id)
    if stored is None:
        raise NotFound("This file is no longer available")
    headers = {
        "Content-Length": str(stored.size),
        "Cache-Control": "private, max-age=0",
        "X-Content-Type-Options": "nosniff",  # served as stored: never sniffed into HTML
        "Content-Disposition": f'inline; filename="{stored.id}{stored.suffix}"',
    }
    return StreamingResponse(files.stream(stored), media_type=stored.content_type, headers=headers)
