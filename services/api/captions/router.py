"""/v1/captions: one short clip, uploaded (multipart ``file``) or named (JSON ``{"uri": ...}``), captioned
synchronously (batched with concurrent requests); the same JSON as ``dataengine caption``.

Statuses: 503 + Retry-After while the engine starts (or when it failed to), 429 + Retry-After when the queue
is full, 504 when the caption took over ``CAPTION_TIMEOUT_S``, 413 only for sizes (the upload or the clip's
duration). A client that disconnects while its clip waits takes it out of the queue.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from pipelines.captioning import TooLongError
from services.api.captions.batcher import QueueFullError, Result
from services.api.captions.service import CaptionService, EngineNotReadyError
from services.api.deps import require_key, settings
from services.api.paths import RejectedError, confine
from services.api.settings import Settings


async def caption_service(request: Request) -> CaptionService:
    """The caption service the lifespan built."""
    value: CaptionService = request.app.state.captions
    return value


router = APIRouter(prefix="/v1/captions", tags=["captions"], dependencies=[Depends(require_key)])


class CaptionByUri(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uri: str = Field(
        min_length=1, max_length=4096, description="a path under an allowed root, or an allowed URI"
    )


_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": CaptionByUri.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


_RETRY = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
STARTING_RETRY_S, FAILED_RETRY_S = 10, 300


@router.post(
    "",
    response_model=dict[str, Any],
    openapi_extra=_BODY,
    responses={
        401: {"description": "missing or wrong API key"},
        403: {"description": "a path outside the allowed roots or a scheme not allowed"},
        413: {"description": "upload over MAX_UPLOAD_MB, or a clip over MAX_CAPTION_S"},
        415: {"description": "neither JSON nor multipart"},
        422: {"description": "a malformed body"},
        429: {"description": "CAPTION_QUEUE clips are waiting; retry after Retry-After", "headers": _RETRY},
        503: {"description": "the caption engine is starting (or failed to start)", "headers": _RETRY},
        504: {"description": "not captioned within CAPTION_TIMEOUT_S; the clip was dropped"},
    },
)
async def caption(
    request: Request,
    service: Annotated[CaptionService, Depends(caption_service)],
    config: Annotated[Settings, Depends(settings)],
) -> dict[str, Any] | Response:
    """Caption one clip: caption, short_caption, structured, engine, model, prompt_id, timings, or `error`."""
    deadline = time.monotonic() + service.timeout_s
    try:
        service.check_ready()
    except EngineNotReadyError as exc:
        retry = FAILED_RETRY_S if exc.failed else STARTING_RETRY_S
        raise HTTPException(503, str(exc), headers={"Retry-After": str(retry)}) from None
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    cleanup: Path | None = None
    if kind == "application/json":
        path = await _by_uri(request, config)
    elif kind == "multipart/form-data":
        cleanup, filename = await _upload(request, config)
        path = str(cleanup)
    else:
        raise HTTPException(415, 'send application/json {"uri": ...} or multipart/form-data with a file')
    try:
        prepared = await to_thread.run_sync(service.prepare, str(path))
        if prepared.error is not None:
            document = prepared.error
        else:
            future = service.submit(prepared)
            result = await _wait(request, future, deadline)
            if result is None:  # nobody is listening; nginx's "client closed request"
                return Response(status_code=499)
            document = service.document(prepared, result)
        if cleanup is not None:  # name the upload as the client did, not where the server kept it
            document["uri"] = f"upload:{filename}"
        return document
    except TooLongError as exc:
        raise HTTPException(413, str(exc)) from None
    except QueueFullError as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
    finally:
        if cleanup is not None:
            cleanup.unlink(missing_ok=True)


async def _wait(request: Request, future: Future[Result], deadline: float) -> Result | None:
    """The caption, or None when the client went away first (the clip is dropped if it still waits).

    Raises:
        HTTPException: 504 at ``deadline`` (the clip is dropped if it still waits).
    """
    waiting = asyncio.wrap_future(future)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            future.cancel()
            raise HTTPException(504, "the caption took longer than this server's CAPTION_TIMEOUT_S")
        done, _ = await asyncio.wait({waiting}, timeout=min(0.25, remaining))
        if done:
            return waiting.result()
        if await request.is_disconnected():
            future.cancel()
            return None


async def _by_uri(request: Request, config: Settings) -> str:
    try:
        body = CaptionByUri.model_validate(json.loads(await request.body()))
        return confine(body.uri, config.roots, config.schemes)
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
        raise HTTPException(422, f'the body must be JSON {{"uri": "..."}}: {exc}') from None
    except RejectedError as exc:
        raise HTTPException(403, f"uri refused: {exc}") from None


async def _upload(request: Request, config: Settings) -> tuple[Path, str]:
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPException(422, "multipart body needs a 'file' part")
    folder = config.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = Path(upload.filename or "").suffix[:8] if upload.filename else ""
    path = folder / f"{uuid.uuid4().hex}{suffix if suffix.isascii() else ''}"
    with path.open("wb") as out:
        await to_thread.run_sync(shutil.copyfileobj, upload.file, out)
    await upload.close()
    return path, Path(upload.filename or "file").name
