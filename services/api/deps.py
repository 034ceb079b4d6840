"""Dependencies every resource shares: the settings and the API key check. Each resource's own service (built
by the lifespan, kept on ``app.state``) is a dependency in its router."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services.api.settings import Settings

_bearer = HTTPBearer(auto_error=False)
_header = APIKeyHeader(name="X-API-Key", auto_error=False)


async def settings(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


async def require_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> None:
    """401 unless ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` names a key (constant time)."""
    given = (bearer.credentials if bearer else None) or header or ""
    keys: list[str] = request.app.state.settings.keys
    # Compare against every key, so the time taken does not say which (or whether one) matched early.
    matched = [hmac.compare_digest(given.encode(), key.encode()) for key in keys]
    if not any(matched):
        raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})
