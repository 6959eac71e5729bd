"""The one interface every routing policy offers the scoring service and the admin API."""
from __future__ import annotations

from typing import Any, Callable

from gateway.config import StickyConfig

# (action, before, after): a policy changed its own route (a canary advanced or rolled back).
ChangeListener = Callable[[str, Any, Any], None]


class Policy:
    """`plan()` is on the request path: it must be cheap and must not fail.

    `route` is the policy's current configuration (a pydantic route model); a policy that
    changes itself (canary) replaces it and tells `on_change`, so the admin API and the audit
    log always show what is in force."""

    def __init__(self, route: Any):
        self.route = route
        self.on_change: ChangeListener | None = None

    @property
    def name(self) -> str:
        return self.route.policy

    @property
    def versions(self) -> set[str]:
        return set(self.route.versions())

    @property
    def default_version(self) -> str:
        """The version whose metadata describes the model (and whose signature decodes requests)."""
        return self.route.versions()[0]

    @property
    def sticky(self) -> StickyConfig | None:
        return getattr(self.route, "sticky", None)

    def plan(self, key: str | None = None):
        raise NotImplementedError

    def observe(self, version: str, ok: bool, latency_ms: float) -> None:
        """The outcome of a call this policy planned; only policies that guard themselves care."""

    def state(self) -> dict[str, Any]:
        """Runtime state beyond the route itself, for the admin API."""
        return {}

    def _changed(self, action: str, before: Any, after: Any) -> None:
        if self.on_change is not None:
            self.on_change(action, before, after)
