"""Where feedback meets predictions: remembers what was served, joins ground truth and rewards
to it, and feeds the joined records to the experiment state - through the feedback topic when
Kafka is on (so every replica learns the same), directly when it is off."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from gateway.experiments.tracker import ExperimentTracker
from gateway.metrics import FEEDBACK_RECORDS
from gateway.tasks import BackgroundTasks
from gateway.feedback.bus import KafkaControl
from gateway.feedback.join import Feedback, JoinError, join, parse_feedback, raw_record
from gateway.feedback.store import PredictionStore

log = logging.getLogger("gateway.feedback")


class FeedbackHub:
    def __init__(self, store: PredictionStore, tracker: ExperimentTracker, instance: str,
                 control: KafkaControl | None = None, topic: str = "scoring.feedback"):
        self.store = store
        self.tracker = tracker
        self.instance = instance
        self.control = control
        self.topic = topic
        self._publishing = BackgroundTasks()

    # -- the request path -----------------------------------------------------------------
    def remember(self, request_id: str, model: str, experiment: str, policy: str, arm: str, reason: str,
                 prediction: np.ndarray) -> None:
        self.tracker.assigned(experiment, arm)
        self.store.remember(request_id, model, experiment, policy, arm, reason, prediction)

    def add_prediction(self, request_id: str, version: str, prediction: np.ndarray) -> None:
        self.store.add_prediction(request_id, version, prediction)

    # -- the feedback endpoint ------------------------------------------------------------
    async def submit(self, model: str, items: list[Feedback]) -> dict[str, Any]:
        """Joins what this replica remembers; passes the rest on through the topic. Returns once
        every record is durably in Kafka (or applied, without Kafka)."""
        joined, forwarded, errors = [], [], []
        for i, feedback in enumerate(items):
            pending = self.store.take(feedback.request_id)
            if pending is None:
                forwarded.append(raw_record(feedback, model))
                continue
            try:
                joined.append(join(pending, feedback, self.instance))
            except JoinError as exc:
                self.store.restore(feedback.request_id, pending)
                errors.append({"index": i, "id": feedback.request_id, "error": str(exc)})
        if self.control is None:
            for record in joined:
                self.tracker.apply(record)
            forwarded_count = 0
        else:
            records = [(r["request_id"], r) for r in joined + forwarded]
            await self.control.send_many(self.topic, records)
            forwarded_count = len(forwarded)
        for outcome, count in (("received", len(items)), ("rejected", len(errors)), ("joined", len(joined)),
                               ("forwarded", forwarded_count), ("unmatched", len(forwarded) - forwarded_count)):
            FEEDBACK_RECORDS.labels(outcome).inc(count)
        return {"accepted": len(items) - len(errors), "joined": len(joined), "forwarded": forwarded_count,
                "unmatched": len(forwarded) - forwarded_count, "errors": errors}

    # -- the feedback topic ---------------------------------------------------------------
    def handle(self, record: dict[str, Any]) -> None:
        kind = record.get("type", "feedback")
        if kind == "joined":
            self.tracker.apply(record)
        elif kind == "feedback":
            feedback = parse_feedback(record)
            pending = self.store.take(feedback.request_id)
            if pending is not None:
                self._publish_later(join(pending, feedback, self.instance))
        else:
            raise ValueError(f"unknown feedback record type {kind!r}")

    def _publish_later(self, joined: dict[str, Any]) -> None:
        async def publish() -> None:
            try:
                await self.control.send(self.topic, joined["request_id"], joined)
                FEEDBACK_RECORDS.labels("joined").inc()
            except Exception:
                log.exception("joined feedback for %s not written", joined["request_id"])
        self._publishing.spawn(publish())

    async def drain(self, timeout: float = 10.0) -> None:
        """Lets joined records already being written reach Kafka before the gateway stops."""
        await self._publishing.drain(timeout)
