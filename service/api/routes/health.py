"""Probes and metrics: /health (liveness), /ready (readiness), /metrics (Prometheus). No auth on these."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.api.deps import ContextDep
from service.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/health")
async def read_health(context: ContextDep) -> JSONResponse:
    """Alive: the process is up and the engine (once started) has not died."""
    lifecycle = context.lifecycle
    failure = lifecycle.fatal or lifecycle.load_error
    if failure is not None:
        return JSONResponse({"status": "error", "detail": failure}, status_code=503)
    if context.model is not None:
        try:
            await context.model.engine.check_health()
        except Exception as exc:
            return JSONResponse({"status": "error", "detail": f"engine dead: {exc}"}, status_code=503)
    return JSONResponse({"status": "ok", "loaded": lifecycle.loaded})


@router.get("/ready")
async def read_ready(context: ContextDep) -> JSONResponse:
    """Ready for traffic: model loaded, engine answering, not draining."""
    lifecycle = context.lifecycle
    if not lifecycle.ready or context.model is None or context.model.engine.errored:
        reason = lifecycle.fatal or ("draining" if lifecycle.draining else (lifecycle.load_error or "loading"))
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ready", "active_requests": lifecycle.num_active})


@router.get("/metrics")
async def read_metrics(context: ContextDep) -> Response:
    """Our series and vLLM's, in the classic Prometheus text format."""
    return Response(context.metrics.exposition(), media_type=CONTENT_TYPE)
