"""Changes routes while the gateway serves: set, promote, switch, advance, roll back, reload.

Every change is validated like the config file, written to the audit log (and acknowledged)
and only then put in force, by replacing the model's policy object in one assignment: a request
already routed finishes where it was sent, the next one follows the new route. Changes are
serialised by one lock. Only routes change at runtime; versions and workers need a restart.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from gateway.config import (ROUTE, error_key, BlueGreenRoute, CanaryRoute, ConfigError, ShadowRoute,
                            load_config, unknown_version_message)
from gateway.control.audit import AuditLog
from gateway.errors import BadRequest, Conflict, NotFound, Unavailable
from gateway.experiments.bandits import BanditState
from gateway.routing import Policy, build_policy
from gateway.routing.bluegreen import BlueGreenPolicy
from gateway.routing.canary import CanaryPolicy
from gateway.service import DeployedModel, ScoringService

log = logging.getLogger("gateway.control")


def _dump(route: Any) -> dict[str, Any]:
    return route.model_dump(mode="json")


def check_signatures(deployed: DeployedModel, route: Any) -> None:
    """Every version a route may call must accept the same requests."""
    signatures = {v: [(t.name, t.shape) for t in deployed.versions[v].inputs] for v in route.versions()}
    first = route.versions()[0]
    for version, signature in signatures.items():
        if signature != signatures[first]:
            raise ValueError(f"version '{version}' takes inputs {[n for n, _ in signature]} but version '{first}' "
                             f"takes {[n for n, _ in signatures[first]]}; a route's versions must accept the same requests")


class RouteController:
    def __init__(self, service: ScoringService, audit: AuditLog, bandit_state: Callable[[str], BanditState],
                 config_path: Path | None = None):
        self.service = service
        self.audit = audit
        self.bandit_state = bandit_state
        self.config_path = config_path
        self.history: dict[str, list[Any]] = {name: [] for name in service.models}
        self._lock = asyncio.Lock()
        for deployed in service.models.values():
            self._watch(deployed.name, deployed.policy)

    # -- reading ---------------------------------------------------------------------------
    def describe(self, name: str) -> dict[str, Any]:
        deployed = self.service.model(name)
        return {"model": name, "route": _dump(deployed.policy.route), "state": deployed.policy.state(),
                "versions": sorted(deployed.versions), "previous": len(self.history[name])}

    # -- changing --------------------------------------------------------------------------
    def validate(self, name: str, raw: Any) -> Any:
        deployed = self.service.model(name)
        try:
            route = ROUTE.validate_python(raw)
            unknown_version_message(route, deployed.versions)
            check_signatures(deployed, route)
        except ValidationError as exc:
            problems = [f"{error_key(e['loc'], route_at_top=True) or 'route'}: "
                        f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
            raise BadRequest("invalid_route", "; ".join(problems), problems=problems) from None
        except ValueError as exc:
            raise BadRequest("invalid_route", str(exc)) from None
        return route

    async def set_route(self, name: str, route: Any, actor: str, action: str = "set_route") -> dict[str, Any]:
        async with self._lock:
            return await self._apply(name, route, actor, action)

    async def _apply(self, name: str, route: Any, actor: str, action: str) -> dict[str, Any]:
        deployed = self.service.model(name)
        before = deployed.policy.route
        policy = build_policy(route, self.bandit_state)
        try:
            await self.audit.write(self.audit.build(actor, action, name, _dump(before), _dump(route)))
        except Exception as exc:
            raise Unavailable("audit_unavailable",
                              f"the change was not applied: its audit record could not be written ({exc})") from None
        self._watch(name, policy)
        deployed.policy = policy
        self.history[name].append(before)
        log.info("%s: %s by %s (%s -> %s)", name, action, actor, before.policy, route.policy)
        return self.describe(name)

    async def promote(self, name: str, version: str, actor: str) -> dict[str, Any]:
        """The version becomes what everyone gets (shadow: the new champion, the old one its challenger)."""
        async with self._lock:
            deployed = self.service.model(name)
            route = deployed.policy.route
            if version not in deployed.versions:
                raise NotFound("unknown_version", f"model '{name}' has no version '{version}'")
            if isinstance(route, ShadowRoute):
                challengers = [c for c in route.challengers if c.version != version]
                demoted = next((c for c in route.challengers if c.version == version), None)
                if demoted is not None:
                    challengers.append(demoted.model_copy(update={"version": route.champion}))
                new = route.model_copy(update={"champion": version, "challengers": challengers})
            elif isinstance(route, CanaryRoute) and version == route.canary:
                new = route.model_copy(update={"step": len(route.steps) - 1, "rolled_back": None})
            elif isinstance(route, BlueGreenRoute):
                if version == route.active:
                    raise Conflict("already_active", f"version '{version}' is already active")
                new = route.model_copy(update={"active": version, "standby": route.active})
            else:
                new = ShadowRoute(champion=version)
            return await self._apply(name, self.validate(name, _dump(new)), actor, f"promote:{version}")

    async def switch(self, name: str, actor: str) -> dict[str, Any]:
        async with self._lock:
            policy = self.service.model(name).policy
            if not isinstance(policy, BlueGreenPolicy):
                raise Conflict("not_blue_green", f"model '{name}' is routed by '{policy.name}', not blue_green")
            return await self._apply(name, policy.switched(), actor, "switch")

    async def advance(self, name: str, actor: str) -> dict[str, Any]:
        async with self._lock:
            policy = self.service.model(name).policy
            if not isinstance(policy, CanaryPolicy):
                raise Conflict("not_canary", f"model '{name}' is routed by '{policy.name}', not canary")
            route = policy.route
            if route.rolled_back or route.step + 1 >= len(route.steps) or policy.broken_objective():
                raise Conflict("cannot_advance", "the canary is rolled back, at its last step, or breaking "
                               "an objective", state=policy.state())
            return await self._apply(name, route.model_copy(update={"step": route.step + 1}), actor, "canary_advance")

    async def rollback(self, name: str, actor: str) -> dict[str, Any]:
        """A canary goes back to all-stable; any other route goes back to the route before the last change."""
        async with self._lock:
            policy = self.service.model(name).policy
            if isinstance(policy, CanaryPolicy) and not policy.route.rolled_back:
                new = policy.route.model_copy(update={"rolled_back": f"by {actor}"})
                return await self._apply(name, new, actor, "canary_rollback")
            if not self.history[name]:
                raise Conflict("no_previous_route", f"model '{name}' has no earlier route to go back to")
            previous = self.history[name][-1]
            result = await self._apply(name, previous, actor, "rollback")
            self.history[name] = self.history[name][:-2]  # the rolled-back route is not a step to return to
            result["previous"] = len(self.history[name])
            return result

    async def reload(self, actor: str) -> dict[str, Any]:
        """Re-reads the config file and applies its routes. A broken file changes nothing."""
        if self.config_path is None:
            raise Conflict("no_config_file", "the gateway was not started from a config file")
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            raise BadRequest("invalid_config", f"config not reloaded, the running config is kept: {exc}") from None
        async with self._lock:
            new_routes = {}
            for name, deployed in self.service.models.items():
                model_config = config.models.get(name)
                if model_config is None or set(model_config.versions) != set(deployed.versions):
                    raise BadRequest("restart_needed", f"{self.config_path}: models.{name}: models and versions "
                                     "cannot change at runtime; restart the gateway to deploy them; nothing reloaded")
                if model_config.route != deployed.policy.route:
                    new_routes[name] = self.validate(name, _dump(model_config.route))
            extra = set(config.models) - set(self.service.models)
            if extra:
                raise BadRequest("restart_needed", f"{self.config_path}: new models {sorted(extra)} need a restart; "
                                 "nothing reloaded")
            changed = {}
            for name, route in new_routes.items():
                changed[name] = await self._apply(name, route, actor, "reload")
            return {"reloaded": str(self.config_path), "changed": sorted(changed)}

    # -- changes a policy makes by itself --------------------------------------------------
    def _watch(self, name: str, policy: Policy) -> None:
        def changed(action: str, before: Any, after: Any) -> None:
            self.history[name].append(before)
            log.warning("%s: %s (%s)", name, action, getattr(after, "rolled_back", None) or "")
            self.audit.write_later(self.audit.build("gateway", action, name, _dump(before), _dump(after)))
        policy.on_change = changed
