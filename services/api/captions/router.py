"""/v1/captions: one short clip, uploaded (multipart ``file``) or named (JSON ``{"uri": ...}``), captioned
synchronously; the same JSON as ``dataengine caption``."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from services.api.captions.service import CaptionRefusedError, CaptionService
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


@router.post(
    "",
    openapi_extra=_BODY,
    responses={
        401: {"description": "missing or wrong API key"},
        403: {"description": "a path outside the allowed roots or a scheme not allowed"},
        413: {"description": "upload over MAX_UPLOAD_MB, or a clip over MAX_CAPTION_S"},
        415: {"description": "neither JSON nor multipart"},
        422: {"description": "a malformed body"},
    },
)
async def caption(
    request: Request,
    service: Annotated[CaptionService, Depends(caption_service)],
    config: Annotated[Settings, Depends(settings)],
) -> dict[str, Any]:
    """Caption one clip: caption, short_caption, structured, engine, model, prompt_id, timings, or `error`."""
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
        document = await to_thread.run_sync(service.caption, str(path))
        if cleanup is not None:  # name the upload as the client did, not where the server kept it
            document["uri"] = f"upload:{filename}"
        return document
    except CaptionRefusedError as exc:
        raise HTTPException(413, str(exc)) from None
    finally:
        if cleanup is not None:
            cleanup.unlink(missing_ok=True)


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
