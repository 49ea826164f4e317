"""Probes and metrics: /health (liveness), /ready (readiness), /metrics (Prometheus). No auth on these."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/health")
async def read_health(request: Request) -> JSONResponse:
    """Alive: the process is up and the engine (once started) has not died."""
    state = request.app.state.service_state
    runner = getattr(request.app.state, "runner", None)
    if state.load_error is not None:
        return JSONResponse({"status": "error", "detail": state.load_error}, status_code=503)
    if runner is not None:
        try:
            await runner.engine.check_health()
        except Exception as exc:
            return JSONResponse({"status": "error", "detail": f"engine dead: {exc}"}, status_code=503)
    return JSONResponse({"status": "ok", "loaded": state.loaded})


@router.get("/ready")
async def read_ready(request: Request) -> JSONResponse:
    """Ready for traffic: model loaded, engine answering, not draining."""
    state = request.app.state.service_state
    runner = getattr(request.app.state, "runner", None)
    if not state.ready or runner is None or runner.engine.errored:
        reason = "draining" if state.draining else (state.load_error or "loading")
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ready", "active_requests": state.num_active})


@router.get("/metrics")
async def read_metrics(request: Request) -> Response:
    """Our series and vLLM's, in the classic Prometheus text format."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE)
