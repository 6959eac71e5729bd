"""Carries out one scoring request: route -> score -> respond, then log and shadow-score.

The route's policy picks the version that answers (and why); the served answer depends only on
that version's pool. Shadow calls start after the answer is ready, run as detached tasks with
their own timeout and in-flight cap, and can only ever produce an event and a metric, never an
error for the caller. What was served is remembered for the feedback join.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson

from gateway import metrics
from gateway.codecs.v2 import InferRequest, decode_infer_request, encode_infer_response
from gateway.errors import ModelFailed, NotFound, TimedOut, Unavailable
from gateway.events.handover import Context, context, outcome_fields, sent_event
from gateway.events.records import fields_json, new_id, sampled
from gateway.events.shipper import EventShipper
from gateway.feedback.hub import FeedbackHub
from gateway.models.repository import ModelVersion
from gateway.parallel.pool import Prediction, ScoringError, WorkerPool, WorkerUnavailable
from gateway.routing import Plan, Policy, ShadowCall, experiment_name
from gateway.tasks import BackgroundTasks

log = logging.getLogger("gateway.service")
# What the caller got, as the event records hold it: {"model_version": served version,
# "outputs": {its first output's name: array}}; built once per request, shared by its events.
Action = dict[str, Any]
# What a logged model call tells its worker of its event (handover.sent_event): the event's
# context, the request id, the policy's reason, and the served answer's JSON for a shadow call
# (None: the call's own answer is served).
EventRequest = tuple[Context, str, str, orjson.Fragment | None]


@dataclass
class DeployedModel:
    name: str
    versions: dict[str, ModelVersion]
    pools: dict[str, WorkerPool]
    policy: Policy  # replaced whole by the admin API; a request keeps the one it started with
    timeout: float  # seconds, for the served answer
    log_sample_rate: float = 1.0
    shadow_in_flight: dict[str, int] = field(default_factory=dict)

    @property
    def experiment(self) -> str:
        return experiment_name(self.name, self.policy.route)


@dataclass
class Outcome:
    status: str  # ok | error | timeout | unavailable
    prediction: Prediction | None
    latency_ms: float
    error: str | None = None


class ScoringService:
    def __init__(self, models: dict[str, DeployedModel], events: EventShipper | None, instance: str, max_rows: int,
                 feedback: FeedbackHub | None = None):
        self.models = models
        self.events = events
        self.feedback = feedback
        self.instance = instance
        self.max_rows = max_rows
        self._shadows = BackgroundTasks()
        self._contexts: dict[tuple, Context] = {}

    def model(self, name: str) -> DeployedModel:
        deployed = self.models.get(name)
        if deployed is None:
            raise NotFound("unknown_model", f"no model named '{name}'", available=sorted(self.models))
        return deployed

    def version(self, name: str, version: str) -> ModelVersion:
        deployed = self.model(name)
        found = deployed.versions.get(version)
        if found is None:
            raise NotFound("unknown_version", f"model '{name}' has no version '{version}'",
                           available=sorted(deployed.versions))
        return found

    async def _score(self, deployed: DeployedModel, version: str, role: str, request: InferRequest,
                     timeout: float, event: EventRequest | None) -> Outcome:
        started = time.monotonic()  # the clock the worker measures the event's latency_ms on
        sent = None if event is None else sent_event(*event, started)
        try:
            prediction = await deployed.pools[version].predict(request.inputs, timeout, sent)
            outcome = Outcome("ok", prediction, (time.monotonic() - started) * 1e3)
        except asyncio.TimeoutError:
            outcome = Outcome("timeout", None, (time.monotonic() - started) * 1e3, f"no answer within {timeout:.3f} s")
        except ScoringError as exc:
            outcome = Outcome("error", None, (time.monotonic() - started) * 1e3, str(exc))
        except WorkerUnavailable as exc:
            outcome = Outcome("unavailable", None, (time.monotonic() - started) * 1e3, str(exc))
        metrics.REQUESTS.labels(deployed.name, version, role, outcome.status).inc()
        metrics.SCORING_LATENCY.labels(deployed.name, version, role).observe(outcome.latency_ms / 1e3)
        return outcome

    def _logged(self, deployed: DeployedModel, request_id: str) -> bool:
        """Whether this request's events are logged (its champion's and shadows' alike)."""
        return self.events is not None and sampled(request_id, deployed.log_sample_rate)

    def _context(self, deployed: DeployedModel, version: str, role: str, plan: Plan) -> Context:
        """The event context of a call to `version` (handover.context), one per combination."""
        key = (deployed.name, version, role, plan.policy, plan.serve, deployed.log_sample_rate)
        found = self._contexts.get(key)
        if found is None:
            if len(self._contexts) >= 10_000:  # a few per route in practice; bounded all the same
                self._contexts.clear()
            outputs = deployed.versions[plan.serve].outputs  # the action holds the served version's first
            found = self._contexts[key] = context(
                self.instance, deployed.name, version, role, plan.policy, version == plan.serve and role != "challenger",
                deployed.log_sample_rate, outputs[0].name if outputs else None)
        return found

    def _log(self, event_context: Context, request_id: str, reason: str, request: InferRequest, outcome: Outcome,
             action: Action | None) -> None:
        """Hands a call's event to the shipper: as its worker wrote it, else written here."""
        prediction = outcome.prediction
        if prediction is not None and prediction.event is not None:
            self.events.hand_over(prediction.event)
            return
        self.events.log(outcome_fields(event_context.values, request_id, reason, outcome.status, outcome.error, action,
                                       outcome.latency_ms), request, prediction)

    async def infer(self, name: str, version: str | None, body: bytes, headers: Mapping[str, str] | None = None) -> bytes:
        deployed = self.model(name)
        policy = deployed.policy
        if version is None:
            served_spec = deployed.versions[policy.default_version]  # a route's versions share one signature
        else:
            served_spec = self.version(name, version)
        request = decode_infer_request(body, served_spec.inputs, served_spec.outputs, self.max_rows)
        plan = policy.plan(self._key(policy, request, headers)) if version is None else \
            Plan("direct", version, "direct", "direct")
        request_id = request.id or new_id()
        event_context = self._context(deployed, plan.serve, plan.role, plan) if self._logged(deployed, request_id) \
            else None
        outcome = await self._score(deployed, plan.serve, plan.role, request, deployed.timeout,
                                    None if event_context is None else (event_context, request_id, plan.reason, None))
        policy.observe(plan.serve, outcome.status == "ok", outcome.latency_ms)
        if outcome.prediction is None:
            if event_context is not None:
                self._log(event_context, request_id, plan.reason, request, outcome, None)
            raise {"timeout": TimedOut, "error": ModelFailed, "unavailable": Unavailable}[outcome.status](
                f"model_{outcome.status}", f"model '{name}' version '{plan.serve}': {outcome.error}",
                request_id=request_id)
        outputs = outcome.prediction.outputs
        served = deployed.versions[plan.serve]
        first = served.outputs[0].name if served.outputs else next(iter(outputs))
        action = {"model_version": plan.serve, "outputs": {first: outputs[first]}}
        if event_context is not None:
            self._log(event_context, request_id, plan.reason, request, outcome, action)
        if self.feedback is not None and version is None:
            self.feedback.remember(request_id, name, deployed.experiment, plan.policy, plan.serve, plan.reason,
                                   outputs[first].copy())  # a copy: a view would pin the worker's whole batch
        if plan.shadows:
            logged_action = None if event_context is None else _action_json(outcome.prediction, action)
            for call in plan.shadows:
                self._start_shadow(deployed, call, plan, request_id, request, action, event_context is not None,
                                   logged_action)
        return encode_infer_response(name, plan.serve, request_id, outputs, request.requested_outputs)

    @staticmethod
    def _key(policy: Policy, request: InferRequest, headers: Mapping[str, str] | None) -> str | None:
        """The stickiness key: a request parameter, else a header, else none (random)."""
        sticky = policy.sticky
        if sticky is None:
            return None
        key = request.parameters.get(sticky.parameter) if sticky.parameter else None
        if key is None and sticky.header and headers is not None:
            key = headers.get(sticky.header)
        return None if key is None else str(key)

    def _start_shadow(self, deployed: DeployedModel, call: ShadowCall, plan: Plan, request_id: str,
                      request: InferRequest, action: Action, logged: bool,
                      logged_action: orjson.Fragment | None) -> None:
        in_flight = deployed.shadow_in_flight.get(call.version, 0)
        if in_flight >= call.max_in_flight:
            metrics.SHADOW_SKIPPED.labels(deployed.name, call.version, "max_in_flight").inc()
            return
        deployed.shadow_in_flight[call.version] = in_flight + 1
        metrics.SHADOW_IN_FLIGHT.labels(deployed.name, call.version).inc()
        self._shadows.spawn(self._shadow(deployed, call, plan, request_id, request, action, logged, logged_action))

    async def _shadow(self, deployed: DeployedModel, call: ShadowCall, plan: Plan, request_id: str,
                      request: InferRequest, action: Action, logged: bool,
                      logged_action: orjson.Fragment | None) -> None:
        """`logged_action`: the served answer's JSON, which the shadow's worker writes into its
        event (None if the request is not logged, or the action could not be written)."""
        try:
            event_context = self._context(deployed, call.version, "challenger", plan) if logged else None
            outcome = await self._score(deployed, call.version, "challenger", request, call.timeout,
                                        None if logged_action is None else
                                        (event_context, request_id, "shadow", logged_action))
            if event_context is not None:
                self._log(event_context, request_id, "shadow", request, outcome, action)
            if self.feedback is not None and outcome.prediction is not None:
                first = next(iter(action["outputs"]))
                prediction = outcome.prediction.outputs.get(first)
                if prediction is not None:
                    self.feedback.add_prediction(request_id, call.version, prediction.copy())
        except Exception:  # a shadow must never take anything else down with it
            log.exception("shadow call to %s/%s failed unexpectedly", deployed.name, call.version)
        finally:
            deployed.shadow_in_flight[call.version] -= 1
            metrics.SHADOW_IN_FLIGHT.labels(deployed.name, call.version).dec()

    async def drain(self, timeout: float = 10.0) -> None:
        """Let shadow calls already started finish, so their events are not lost at shutdown."""
        await self._shadows.drain(timeout)


def _action_json(prediction: Prediction, action: Action) -> orjson.Fragment | None:
    """The served answer's JSON for the shadow calls' events: as the worker wrote it, else here
    (None if it cannot be written: the shadows' events are then written by the loop, and counted
    as unshipped)."""
    if prediction.action is not None:
        return orjson.Fragment(prediction.action)
    try:
        return orjson.Fragment(fields_json(action))
    except TypeError:
        return None
