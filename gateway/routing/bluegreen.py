"""Blue/green: everything to the active version; a switch swaps active and standby at once.

Both versions stay deployed and warm, so a switch is one assignment on the event loop:
requests already planned finish on the version they started with, later ones go to the other.
"""
from __future__ import annotations

from gateway.config import BlueGreenRoute
from gateway.routing.base import Policy
from gateway.routing.plan import Plan


class BlueGreenPolicy(Policy):
    route: BlueGreenRoute

    def plan(self, key: str | None = None) -> Plan:
        return Plan("blue_green", self.route.active, "active", "arm")

    def switched(self) -> BlueGreenRoute:
        return self.route.model_copy(update={"active": self.route.standby, "standby": self.route.active})
