"""Ground truth in (`POST /v2/models/{name}/feedback`) and experiment statistics out
(`GET /experiments/{name}`)."""
from __future__ import annotations

import orjson
from aiohttp import web

from gateway.config import BanditRoute
from gateway.errors import BadRequest, Unavailable
from gateway.experiments.report import experiment_report
from gateway.feedback.hub import FeedbackHub
from gateway.feedback.join import parse_feedback_body
from gateway.rest.app import SERVICE
from gateway.service import ScoringService

HUB = web.AppKey("feedback_hub", FeedbackHub)
MAX_RECORDS = web.AppKey("feedback_max_records", int)
JSON = "application/json"


def _service(request: web.Request) -> ScoringService:
    return request.app[SERVICE]


async def feedback(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    deployed = _service(request).model(name)
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise BadRequest("invalid_json", f"request body is not valid JSON: {exc}") from None
    items = parse_feedback_body(payload, request.app[MAX_RECORDS])
    route = deployed.policy.route
    if isinstance(route, BanditRoute) and route.algorithm == "thompson_beta":
        for i, item in enumerate(items):
            if item.reward is not None and not 0.0 <= item.reward <= 1.0:
                raise BadRequest("invalid_feedback", f"feedback[{i}].reward must be in [0, 1] for a "
                                 "thompson_beta bandit (0/1 rewards)")
    try:
        result = await request.app[HUB].submit(name, items)
    except Exception as exc:
        raise Unavailable("feedback_not_stored", f"feedback not accepted: Kafka did not take it ({exc}); "
                          "send it again") from None
    status = 202 if not result["errors"] else 422  # 422: the listed records were refused, the others taken
    return web.Response(body=orjson.dumps(result), status=status, content_type=JSON)


async def experiment(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    deployed = _service(request).model(name)
    report = experiment_report(request.app[HUB].tracker, name, deployed.policy)
    return web.Response(body=orjson.dumps(report, option=orjson.OPT_SERIALIZE_NUMPY), content_type=JSON)


def add_feedback_routes(app: web.Application, hub: FeedbackHub, max_records: int) -> None:
    app[HUB] = hub
    app[MAX_RECORDS] = max_records
    app.router.add_post("/v2/models/{name}/feedback", feedback)
    app.router.add_get("/experiments/{name}", experiment)
