"""Creates the gateway's topics with the configured partitions, so nothing depends on the
broker's auto-creation defaults (often off in production, and 1 partition when on)."""
from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger("gateway.events")


async def ensure_topics(bootstrap_servers: str, names: list[str], partitions: int, replication_factor: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                await admin.create_topics([NewTopic(n, partitions, replication_factor) for n in missing])
            except TopicAlreadyExistsError:
                pass  # another gateway created it first
            log.info("created topics %s (%d partitions, replication %d)", ", ".join(missing), partitions,
                     replication_factor)
    finally:
        await admin.close()
