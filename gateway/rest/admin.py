"""The admin API: read and change routes, promote, switch, advance, roll back, reload.

Every call needs `Authorization: Bearer <token>` with a token from `admin.tokens`: none gives
401, a wrong one 403. The token's configured name (never the token) is the audit record's
actor. Tokens are compared in constant time and never logged.
"""
from __future__ import annotations

import hmac
from typing import Awaitable, Callable

import orjson
from aiohttp import web

from gateway.control.routes import RouteController
from gateway.errors import BadRequest, Forbidden, Unauthorized

CONTROLLER = web.AppKey("controller", RouteController)
TOKENS = web.AppKey("admin_tokens", dict)
JSON = "application/json"


def actor(request: web.Request) -> str:
    """The caller's configured name, or an error; the token itself goes nowhere else."""
    tokens: dict[str, str] = request.app[TOKENS]
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("unauthorized", "admin calls need 'Authorization: Bearer <token>'")
    found = None
    for name, token in tokens.items():  # every token compared, in constant time, whatever matches
        if hmac.compare_digest(presented.encode(), token.encode()):
            found = name
    if found is None:
        raise Forbidden("forbidden", "the token is not an admin token" if tokens else
                        "the admin API is disabled: no admin.tokens configured")
    return found


Handler = Callable[[web.Request, RouteController, str], Awaitable[dict]]


def admin(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        who = actor(request)
        result = await handler(request, request.app[CONTROLLER], who)
        response = web.Response(body=orjson.dumps(result), content_type=JSON)
        response.headers["Cache-Control"] = "no-store"
        return response
    return handle


async def _body(request: web.Request) -> object:
    try:
        return orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise BadRequest("invalid_json", f"request body is not valid JSON: {exc}") from None


@admin
async def list_routes(request, controller, who):
    return {"models": {name: controller.describe(name) for name in controller.service.models}}


@admin
async def get_route(request, controller, who):
    return controller.describe(request.match_info["name"])


@admin
async def put_route(request, controller, who):
    name = request.match_info["name"]
    route = controller.validate(name, await _body(request))
    return await controller.set_route(name, route, who)


@admin
async def promote(request, controller, who):
    body = await _body(request)
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str):
        raise BadRequest("invalid_request", "body must be {\"version\": \"<version to promote>\"}")
    return await controller.promote(request.match_info["name"], version, who)


@admin
async def switch(request, controller, who):
    return await controller.switch(request.match_info["name"], who)


@admin
async def advance(request, controller, who):
    return await controller.advance(request.match_info["name"], who)


@admin
async def rollback(request, controller, who):
    return await controller.rollback(request.match_info["name"], who)


@admin
async def reload(request, controller, who):
    return await controller.reload(who)


@admin
async def audit(request, controller, who):
    return {"recent": list(controller.audit.recent)}


def add_admin_routes(app: web.Application, controller: RouteController, tokens: dict[str, str]) -> None:
    app[CONTROLLER] = controller
    app[TOKENS] = dict(tokens)
    r = app.router
    r.add_get("/admin/routes", list_routes)
    r.add_get("/admin/models/{name}/route", get_route)
    r.add_put("/admin/models/{name}/route", put_route)
    r.add_post("/admin/models/{name}/promote", promote)
    r.add_post("/admin/models/{name}/switch", switch)
    r.add_post("/admin/models/{name}/canary/advance", advance)
    r.add_post("/admin/models/{name}/rollback", rollback)
    r.add_post("/admin/reload", reload)
    r.add_get("/admin/audit", audit)
