"""`GET /v1/models`: the model snapshots this worker scores with, for the bank's API.

Read from the worker's registry (engine/models/registry.py), not from Valkey: what
is listed is what decisions are using right now (at most one poll behind a publish).
"""

from __future__ import annotations

from aiohttp import web

from engine.http.errors import json_response
from engine.http.security import require_api_token
from engine.http.state import MODELS, SETTINGS

__all__ = ["handle_models"]


async def handle_models(request: web.Request) -> web.Response:
    """`GET /v1/models` (API token): name, version, quality and maturity per model."""
    require_api_token(request.app[SETTINGS], request)
    registry = request.app.get(MODELS)
    current = registry.current if registry is not None else {}
    models = []
    for name in sorted(current):
        s = current[name].snapshot
        models.append(
            {
                "name": s.name,
                "version": s.version,
                "samples": s.samples,
                "positives": s.positives,
                "auc": s.auc,
                "log_loss": s.log_loss,
                "mature": s.mature,
                "prior": s.prior,
                "updated_at": s.created_ms,
            }
        )
    return json_response({"models": models})
