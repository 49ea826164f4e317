"""API-key check for the `/v1` routes (health, readiness and metrics stay open for probes and scrapers)."""

from __future__ import annotations

import secrets

from fastapi import Request

from service.errors import Unauthorized


async def require_api_key(request: Request) -> None:
    """Accept `Authorization: Bearer <key>` for any configured key; no keys configured means open.

    Declared on the `/v1` router, so it runs before any route dependency: a client without a key gets 401
    even while the model loads or the service drains."""
    keys: list[str] = request.app.state.context.settings.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
    if not any(secrets.compare_digest(token.strip().encode(), key.encode()) for key in keys):
        raise Unauthorized("Invalid API key.", code="invalid_api_key")
