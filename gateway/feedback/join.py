"""Feedback records in, joined feedback records out.

A feedback record names a request id and carries either its ground truth (one value per row
the request scored) or a reward (one number for the request). Joining it to the remembered
prediction gives each scored version's loss on that request (0/1 error for integer outputs,
squared error otherwise) and the served arm's reward: the given reward, or else the share of
rows the served version got right (negative mean squared error for numeric outputs).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.errors import BadRequest
from gateway.events.records import new_id
from gateway.feedback.store import Pending

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Feedback:
    request_id: str
    ground_truth: tuple[float, ...] | None
    reward: float | None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_feedback(item: Any, where: str = "feedback") -> Feedback:
    """One record, validated; `id` and `request_id` are both accepted for the request id."""
    if not isinstance(item, dict):
        raise BadRequest("invalid_feedback", f"{where} must be an object with 'id' and 'ground_truth' or 'reward'")
    request_id = item.get("id", item.get("request_id"))
    if not isinstance(request_id, str) or not request_id:
        raise BadRequest("invalid_feedback", f"{where}.id must be the request id (a non-empty string)")
    truth, reward = item.get("ground_truth"), item.get("reward")
    if (truth is None) == (reward is None):
        raise BadRequest("invalid_feedback", f"{where} must carry exactly one of 'ground_truth' and 'reward'")
    if reward is not None:
        if not _number(reward):
            raise BadRequest("invalid_feedback", f"{where}.reward must be a finite number")
        return Feedback(request_id, None, float(reward))
    values = truth if isinstance(truth, list) else [truth]
    if not values or not all(_number(v) for v in values):
        raise BadRequest("invalid_feedback",
                         f"{where}.ground_truth must be a number, or a list of numbers (one per row)")
    return Feedback(request_id, tuple(float(v) for v in values), None)


def parse_feedback_body(payload: Any, max_records: int) -> list[Feedback]:
    """One record, a list of them, or {"feedback": [...]}."""
    if isinstance(payload, dict) and "feedback" in payload:
        payload = payload["feedback"]
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise BadRequest("invalid_feedback", "no feedback records in the request")
    if len(items) > max_records:
        raise BadRequest("too_many_records", f"{len(items)} feedback records; the limit is {max_records}",
                         limit=max_records)
    return [parse_feedback(item, f"feedback[{i}]") for i, item in enumerate(items)]


class JoinError(ValueError):
    """Feedback that does not fit its prediction (wrong number of rows)."""


def _loss(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    if prediction.dtype.kind in "iub":
        return (prediction != truth).astype(float)
    return (prediction.astype(float) - truth) ** 2


def join(pending: Pending, feedback: Feedback, instance: str) -> dict[str, Any]:
    outcomes: dict[str, dict[str, Any]] = {}
    reward = feedback.reward
    if feedback.ground_truth is not None:
        truth = np.asarray(feedback.ground_truth)
        for version, prediction in pending.predictions.items():
            flat = prediction.reshape(prediction.shape[0], -1)[:, 0]  # one value per row
            if flat.shape[0] != truth.shape[0]:
                raise JoinError(f"ground_truth has {truth.shape[0]} values but the request scored "
                                f"{flat.shape[0]} rows")
            loss = _loss(flat, truth)
            outcomes[version] = {"prediction": flat.tolist(), "loss": loss.tolist()}
        served = outcomes[pending.arm]
        integer = pending.predictions[pending.arm].dtype.kind in "iub"
        mean_loss = float(np.mean(served["loss"]))
        reward = 1.0 - mean_loss if integer else -mean_loss
    return {
        "type": "joined", "schema_version": SCHEMA_VERSION, "feedback_id": new_id(),
        "request_id": feedback.request_id, "model_name": pending.model, "experiment": pending.experiment,
        "policy": pending.policy, "arm": pending.arm, "reason": pending.reason,
        "ground_truth": None if feedback.ground_truth is None else list(feedback.ground_truth),
        "reward": reward, "outcomes": outcomes, "ts_ms": int(time.time() * 1000), "gateway_instance": instance,
    }


def raw_record(feedback: Feedback, model: str) -> dict[str, Any]:
    """Feedback this replica could not join, for whichever replica remembers the prediction."""
    return {"type": "feedback", "request_id": feedback.request_id, "model_name": model,
            "ground_truth": None if feedback.ground_truth is None else list(feedback.ground_truth),
            "reward": feedback.reward, "ts_ms": int(time.time() * 1000)}
