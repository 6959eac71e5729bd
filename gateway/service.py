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

from gateway import metrics
from gateway.codecs.v2 import InferRequest, decode_infer_request, encode_infer_response
from gateway.errors import ModelFailed, NotFound, TimedOut, Unavailable
from gateway.events.shipper import EventShipper
from gateway.events.records import new_id, sampled
from gateway.feedback.hub import FeedbackHub
from gateway.models.repository import ModelVersion
from gateway.parallel.pool import Prediction, ScoringError, WorkerPool, WorkerUnavailable
from gateway.routing import Plan, Policy, ShadowCall, experiment_name
from gateway.tasks import BackgroundTasks

log = logging.getLogger("gateway.service")
# What the caller got, as the event records hold it: {"model_version": served version,
# "outputs": {its first output's name: array}}; built once per request, shared by its events.
Action = dict[str, Any]


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
                     timeout: float, logged: bool) -> Outcome:
        started = time.perf_counter()
        try:
            prediction = await deployed.pools[version].predict(request.inputs, timeout, logged)
            outcome = Outcome("ok", prediction, (time.perf_counter() - started) * 1e3)
        except asyncio.TimeoutError:
            outcome = Outcome("timeout", None, (time.perf_counter() - started) * 1e3, f"no answer within {timeout:.3f} s")
        except ScoringError as exc:
            outcome = Outcome("error", None, (time.perf_counter() - started) * 1e3, str(exc))
        except WorkerUnavailable as exc:
            outcome = Outcome("unavailable", None, (time.perf_counter() - started) * 1e3, str(exc))
        metrics.REQUESTS.labels(deployed.name, version, role, outcome.status).inc()
        metrics.SCORING_LATENCY.labels(deployed.name, version, role).observe(outcome.latency_ms / 1e3)
        return outcome

    def _logged(self, deployed: DeployedModel, request_id: str) -> bool:
        """Whether this request's events are logged (its champion's and shadows' alike)."""
        return self.events is not None and sampled(request_id, deployed.log_sample_rate)

    def _log(self, deployed: DeployedModel, version: str, role: str, plan: Plan, reason: str, request_id: str,
             request: InferRequest, outcome: Outcome, action: Action | None) -> None:
        self.events.log((  # records.FIELDS' values, in its order (a tuple: the loop builds no dict per event)
            time.time_ns() // 1_000_000, request_id, self.instance, deployed.name, version, role, plan.policy, version,
            reason, version == plan.serve and role != "challenger", outcome.status, outcome.error, action,
            int(outcome.latency_ms * 1000) / 1000,  # to the µs; round() costs 3x
            deployed.log_sample_rate,
        ), request, outcome.prediction)

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
        logged = self._logged(deployed, request_id)
        outcome = await self._score(deployed, plan.serve, plan.role, request, deployed.timeout, logged)
        policy.observe(plan.serve, outcome.status == "ok", outcome.latency_ms)
        if outcome.prediction is None:
            if logged:
                self._log(deployed, plan.serve, plan.role, plan, plan.reason, request_id, request, outcome, None)
            raise {"timeout": TimedOut, "error": ModelFailed, "unavailable": Unavailable}[outcome.status](
                f"model_{outcome.status}", f"model '{name}' version '{plan.serve}': {outcome.error}",
                request_id=request_id)
        outputs = outcome.prediction.outputs
        served = deployed.versions[plan.serve]
        first = served.outputs[0].name if served.outputs else next(iter(outputs))
        action = {"model_version": plan.serve, "outputs": {first: outputs[first]}}
        if logged:
            self._log(deployed, plan.serve, plan.role, plan, plan.reason, request_id, request, outcome, action)
        if self.feedback is not None and version is None:
            self.feedback.remember(request_id, name, deployed.experiment, plan.policy, plan.serve, plan.reason,
                                   outputs[first].copy())  # a copy: a view would pin the worker's whole batch
        for call in plan.shadows:
            self._start_shadow(deployed, call, plan, request_id, request, action, logged)
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
                      request: InferRequest, action: Action, logged: bool) -> None:
        in_flight = deployed.shadow_in_flight.get(call.version, 0)
        if in_flight >= call.max_in_flight:
            metrics.SHADOW_SKIPPED.labels(deployed.name, call.version, "max_in_flight").inc()
            return
        deployed.shadow_in_flight[call.version] = in_flight + 1
        metrics.SHADOW_IN_FLIGHT.labels(deployed.name, call.version).inc()
        self._shadows.spawn(self._shadow(deployed, call, plan, request_id, request, action, logged))

    async def _shadow(self, deployed: DeployedModel, call: ShadowCall, plan: Plan, request_id: str,
                      request: InferRequest, action: Action, logged: bool) -> None:
        try:
            outcome = await self._score(deployed, call.version, "challenger", request, call.timeout, logged)
            if logged:
                self._log(deployed, call.version, "challenger", plan, "shadow", request_id, request, outcome, action)
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

