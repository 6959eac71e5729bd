"""The HTTP surface: Open Inference Protocol (V2) REST endpoints, health, and /metrics.

Handlers only translate between HTTP and the scoring service; every failure leaves as a JSON
body `{"error": ..., "code": ...}` with a 4xx/5xx status, whatever raised it.
"""
from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import __version__, metrics
from gateway.errors import ApiError, Unavailable
from gateway.models.repository import ModelVersion, TensorSpec
from gateway.service import ScoringService

log = logging.getLogger("gateway.rest")
SERVICE = web.AppKey("service", ScoringService)
MAX_BODY = web.AppKey("max_body_bytes", int)
JSON = "application/json"


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON)


def _error(status: int, code: str, message: str, **details: object) -> web.Response:
    return _json({"error": message, "code": code, **({"details": details} if details else {})}, status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    endpoint = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _json(exc.body(), exc.status)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[MAX_BODY]
        response = _error(413, "body_too_large", f"request body exceeds the {limit} byte limit", limit=limit)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        response = _error(exc.status, code, f"{request.method} {request.path}: {exc.reason}")
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        response = _error(500, "internal_error", "unexpected server error; it has been logged")
    metrics.HTTP_REQUESTS.labels(endpoint, str(response.status)).inc()
    metrics.HTTP_LATENCY.labels(endpoint).observe(time.perf_counter() - started)
    return response


def _tensor_meta(t: TensorSpec) -> dict:
    meta = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
    if t.feature_names:
        meta["parameters"] = {"feature_names": list(t.feature_names)}
    return meta


def _model_meta(mv: ModelVersion, versions: list[str]) -> dict:
    return {
        "name": mv.name, "versions": versions, "platform": "onnxruntime" if mv.runtime == "onnx" else mv.runtime,
        "inputs": [_tensor_meta(t) for t in mv.inputs], "outputs": [_tensor_meta(t) for t in mv.outputs],
        "parameters": {"version": mv.version, "sha256": mv.sha256, "training": mv.training},
    }


async def live(request: web.Request) -> web.Response:
    return _json({"live": True})


async def ready(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    not_ready = [f"{m.name}/{v}" for m in service.models.values() for v, p in m.pools.items() if not p.ready]
    if not_ready:
        return _json({"ready": False, "not_ready": not_ready}, 503)
    return _json({"ready": True})


async def server_metadata(request: web.Request) -> web.Response:
    return _json({"name": "scoring-gateway", "version": __version__, "extensions": []})


async def model_metadata(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    name, version = request.match_info["name"], request.match_info.get("version")
    deployed = service.model(name)
    mv = service.version(name, version or deployed.policy.default_version)
    return _json(_model_meta(mv, sorted(deployed.versions)))


async def model_ready(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    name, version = request.match_info["name"], request.match_info.get("version")
    deployed = service.model(name)
    versions = [version] if version else sorted(deployed.policy.versions)
    for v in versions:
        service.version(name, v)
    is_ready = all(deployed.pools[v].ready for v in versions)
    if not is_ready:
        raise Unavailable("model_not_ready", f"model '{name}' is not ready", versions=versions)
    return _json({"name": name, "ready": True, **({"version": version} if version else {})})


async def infer(request: web.Request) -> web.Response:
    body = await request.read()
    result = await request.app[SERVICE].infer(request.match_info["name"], request.match_info.get("version"), body,
                                              request.headers)
    return web.Response(body=result, content_type=JSON)


async def prometheus(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(service: ScoringService, max_body_bytes: int) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes, middlewares=[errors_as_json])
    app[SERVICE] = service
    app[MAX_BODY] = max_body_bytes
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_post(prefix + "/infer", infer)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/metrics", prometheus)
    return app
