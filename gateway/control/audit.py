"""Audit records: who changed what, when, from what to what (topic `scoring.audit`, key = model).

An admin change is written to Kafka and acknowledged before it takes effect, so no change runs
unaudited; if the broker cannot take the record, the change is refused. A change the gateway
makes by itself (a canary rolling back) takes effect at once, and its record follows.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

from gateway.events.records import new_id
from gateway.feedback.bus import KafkaControl
from gateway.tasks import BackgroundTasks

log = logging.getLogger("gateway.audit")
SCHEMA_VERSION = 1


class AuditLog:
    def __init__(self, control: KafkaControl | None, topic: str, instance: str, keep: int = 1000):
        self.control = control
        self.topic = topic
        self.instance = instance
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)  # for GET /admin/audit
        self._pending = BackgroundTasks()

    def build(self, actor: str, action: str, model: str | None, before: Any, after: Any) -> dict[str, Any]:
        now = time.time()
        return {
            "type": "audit", "schema_version": SCHEMA_VERSION, "audit_id": new_id(),
            "timestamp": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
            "ts_ms": int(now * 1000), "actor": actor, "action": action, "model": model,
            "before": before, "after": after, "gateway_instance": self.instance,
        }

    async def write(self, record: dict[str, Any]) -> None:
        """Raises if Kafka does not acknowledge the record; the caller then refuses the change."""
        if self.control is not None:
            await self.control.send(self.topic, record["model"] or "gateway", record)
        self.recent.append(record)
        log.info("audit: %s by %s on %s", record["action"], record["actor"], record["model"] or "gateway")

    def write_later(self, record: dict[str, Any]) -> None:
        """For changes already in force: written in the background, retried until it goes through."""
        async def keep_trying() -> None:
            for attempt in range(60):
                try:
                    await self.write(record)
                    return
                except Exception as exc:
                    log.warning("audit record %s not written yet (%s); retrying", record["audit_id"], exc)
                    await asyncio.sleep(min(30, 2 ** attempt))
            log.error("audit record lost after retries: %s", record)
        self._pending.spawn(keep_trying())

    async def drain(self, timeout: float = 10.0) -> None:
        await self._pending.drain(timeout)
