"""Fire-and-forget work that must neither be garbage-collected mid-flight nor cut off at shutdown.

asyncio keeps only weak references to tasks, so whoever starts one must hold it; and work that
produces a record (a shadow call's event, a joined feedback record, an audit record) should be
given a moment to finish when the gateway stops.
"""
from __future__ import annotations

import asyncio
from typing import Coroutine


class BackgroundTasks:
    def __init__(self):
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coroutine: Coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, timeout: float = 10.0) -> None:
        """Waits up to `timeout` for the tasks started so far."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
