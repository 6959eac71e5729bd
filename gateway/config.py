"""Typed gateway configuration, validated at start-up.

Every error names the file, the key and what to do about it, so a bad deploy fails before it
serves a request. `${VAR}` and `${VAR:-default}` in the YAML are replaced from the environment.
"""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from gateway.parallel.cpus import allowed_cpus


class ConfigError(Exception):
    """The configuration cannot be used; str() is the full, user-facing explanation."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger bodies get 413")
    max_rows: int = Field(10_000, ge=1, description="rows in one request; more get 400")
    instance_id: str | None = Field(None, description="names this process in events; default host-pid")
    loop_cpus: list[int] | Literal["auto"] | None = Field(
        None, description="CPUs the request loop has to itself; workers and the event shipper run on the other "
                          "CPUs; auto: the first CPU this process may use, if it may use two or more "
                          "(gateway.parallel.cpus)")

    @field_validator("loop_cpus")
    @classmethod
    def _cpus_left_for_the_rest(cls, cpus: list[int] | str | None) -> list[int] | str | None:
        if cpus is None:
            return None
        if not hasattr(os, "sched_setaffinity"):
            raise ValueError("needs Linux (sched_setaffinity); remove the key on this system")
        if cpus == "auto":
            return cpus  # resolved at start-up, on the CPUs the gateway may use then (CpuLayout.of)
        if not cpus:
            raise ValueError("give at least one CPU, or remove the key to let the scheduler place the loop")
        allowed = allowed_cpus()
        outside = sorted(set(cpus) - allowed)
        if outside:
            raise ValueError(f"CPU {', '.join(map(str, outside))} is not one this process may run on "
                             f"(it may use {', '.join(map(str, sorted(allowed)))}); pick from those")
        if not allowed - set(cpus):
            raise ValueError(f"leaves no CPU for the model workers and the event shipper (this process may use "
                             f"{', '.join(map(str, sorted(allowed)))}); leave at least one out")
        return sorted(set(cpus))

    def instance(self) -> str:
        return self.instance_id or f"{socket.gethostname()}-{os.getpid()}"


class VersionConfig(_Strict):
    workers: int = Field(1, ge=1, le=64, description="worker processes for this model version")
    max_batch_rows: int = Field(4096, ge=1, description="rows a worker stacks into one model call")


class ChallengerConfig(_Strict):
    version: str
    fraction: float = Field(1.0, ge=0.0, le=1.0, description="share of requests the challenger also scores")
    timeout_ms: int = Field(1000, ge=1)
    max_in_flight: int = Field(256, ge=1, description="shadow calls in flight before new ones are skipped")


class StickyConfig(_Strict):
    """Where a request's stickiness key comes from: a request parameter first, then a header."""
    parameter: str | None = Field("customer_id", description="key in the request's `parameters` object")
    header: str | None = Field("X-Customer-Id", description="HTTP header read when the parameter is absent")


class ShadowRoute(_Strict):
    """Champion answers; challengers score a fraction of requests in the dark."""
    policy: Literal["shadow"] = "shadow"
    champion: str
    challengers: list[ChallengerConfig] = []

    def versions(self) -> list[str]:
        return [self.champion, *(c.version for c in self.challengers)]

    @model_validator(mode="after")
    def _distinct(self) -> "ShadowRoute":
        if self.champion in {c.version for c in self.challengers}:
            raise ValueError(f"version '{self.champion}' cannot be champion and challenger at once")
        return self


class ABDesign(_Strict):
    """A fixed-horizon test planned up front: the sample size per arm follows from these."""
    baseline_rate: float = Field(gt=0, lt=1, description="the control arm's expected conversion/accuracy")
    minimum_effect: float = Field(gt=0, description="smallest difference worth detecting (absolute, e.g. 0.02)")
    alpha: float = Field(0.05, gt=0, lt=1)
    power: float = Field(0.8, gt=0, lt=1)


class ABRoute(_Strict):
    """Each request is scored by exactly one version, drawn by weight (sticky by key if configured)."""
    policy: Literal["ab"]
    experiment: str = Field(description="names the experiment and salts the sticky hash")
    weights: dict[str, float] = Field(description="version -> weight; weights are normalised")
    sticky: StickyConfig | None = Field(None, description="absent: each request drawn at random")
    design: ABDesign | None = None

    def versions(self) -> list[str]:
        return list(self.weights)

    @field_validator("weights", mode="before")
    @classmethod
    def _keys_are_strings(cls, value: Any) -> Any:
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _weights_usable(self) -> "ABRoute":
        if len(self.weights) < 2:
            raise ValueError("an A/B route needs at least two versions in weights")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("weights must be non-negative and not all zero")
        return self


class CanaryObjectives(_Strict):
    """What the canary must keep to; breaking one rolls it back by itself."""
    max_error_rate: float = Field(0.05, ge=0, le=1, description="share of canary calls that may fail")
    max_p99_ms: float | None = Field(None, gt=0, description="canary latency p99 ceiling (none: not checked)")
    min_requests: int = Field(20, ge=1, description="canary calls seen in a step before judging it")


class CanaryRoute(_Strict):
    """A new version takes a growing share of traffic, step by step, unless it misbehaves."""
    policy: Literal["canary"]
    stable: str
    canary: str
    steps: list[float] = Field([1, 5, 25, 100], description="canary share in percent, step by step")
    step: int = Field(0, ge=0, description="the step to start at (index into steps)")
    step_seconds: float | None = Field(None, gt=0, description="advance after this long; none: only by admin call")
    objectives: CanaryObjectives = CanaryObjectives()
    sticky: StickyConfig | None = None
    rolled_back: str | None = Field(None, description="set when the canary was rolled back: why; all traffic to stable")

    def versions(self) -> list[str]:
        return [self.stable, self.canary]

    @model_validator(mode="after")
    def _steps_usable(self) -> "CanaryRoute":
        if self.stable == self.canary:
            raise ValueError("stable and canary must be different versions")
        if not self.steps or any(not 0 <= p <= 100 for p in self.steps) or self.steps != sorted(self.steps):
            raise ValueError("steps must be percentages in 0..100, in increasing order")
        if self.step >= len(self.steps):
            raise ValueError(f"step {self.step} is past the last of {len(self.steps)} steps")
        return self


class BlueGreenRoute(_Strict):
    """All traffic to `active`; `standby` is deployed and warm, ready for an atomic switch."""
    policy: Literal["blue_green"]
    active: str
    standby: str

    def versions(self) -> list[str]:
        return [self.active, self.standby]

    @model_validator(mode="after")
    def _distinct(self) -> "BlueGreenRoute":
        if self.active == self.standby:
            raise ValueError("active and standby must be different versions")
        return self


BanditAlgorithm = Literal["epsilon_greedy", "ucb1", "thompson_beta", "thompson_gaussian"]


class BanditRoute(_Strict):
    """Traffic shifts toward the version with the best observed reward (rewards arrive as feedback)."""
    policy: Literal["bandit"]
    experiment: str = Field(description="names the experiment; its state is rebuilt from scoring.feedback")
    arms: list[str] = Field(min_length=2)
    algorithm: BanditAlgorithm = "thompson_beta"
    epsilon: float = Field(0.1, ge=0, le=1, description="epsilon_greedy: share of random exploration")

    def versions(self) -> list[str]:
        return list(self.arms)

    @model_validator(mode="after")
    def _distinct(self) -> "BanditRoute":
        if len(set(self.arms)) != len(self.arms):
            raise ValueError("arms must be distinct versions")
        return self


Route = Annotated[Union[ShadowRoute, ABRoute, CanaryRoute, BlueGreenRoute, BanditRoute], Field(discriminator="policy")]
ROUTE = TypeAdapter(Route)


class ModelConfig(_Strict):
    versions: dict[str, VersionConfig]
    route: Route
    timeout_ms: int = Field(2000, ge=1, description="the served answer's deadline; later answers get 504")
    log_sample_rate: float = Field(1.0, ge=0.0, le=1.0, description="share of requests whose events are logged")

    @field_validator("versions", mode="before")
    @classmethod
    def _version_keys_are_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): ({} if v is None else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _route_names_known_versions(self) -> "ModelConfig":
        unknown_version_message(self.route, self.versions)
        return self


def _paths_naming(value: Any, version: str, path: str) -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in
                ([f"{path}.{k}"] if k == version and path.endswith("weights") else _paths_naming(v, version, f"{path}.{k}"))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _paths_naming(v, version, f"{path}.{i}")]
    return [path] if value == version and not path.endswith(("policy", "experiment")) else []


def unknown_version_message(route: Any, versions: Any) -> None:
    """Raises ValueError naming the route key that names a version which is not deployed."""
    known = ", ".join(sorted(versions)) or "(none)"
    for version in route.versions():
        if version not in versions:
            where = ", ".join(_paths_naming(route.model_dump(), version, "route")) or "route"
            raise ValueError(f"{where} '{version}' is not one of the deployed versions: {known}")


class AdminConfig(_Strict):
    """The admin API. Tokens map a caller's name (recorded in audit events) to its secret."""
    tokens: dict[str, str | None] = Field({}, description="name -> token; write tokens as ${ENV_VAR}, never literally")

    @field_validator("tokens")
    @classmethod
    def _long_enough(cls, value: dict[str, str | None]) -> dict[str, str]:
        value = {name: token for name, token in value.items() if token}  # ${UNSET:-} leaves that name out
        short = [name for name, token in value.items() if len(token) < 16]
        if short:
            raise ValueError(f"tokens for {', '.join(short)} are shorter than 16 characters; use long random tokens")
        return value


class FeedbackConfig(_Strict):
    """Joining ground truth to predictions: how much the gateway remembers, and for how long."""
    max_pending: int = Field(100_000, ge=1, description="predictions kept for joining (~0.7 KB each); the oldest go first")
    ttl_seconds: float = Field(3600.0, gt=0, description="feedback later than this after the prediction is not joined")
    max_records: int = Field(10_000, ge=1, description="records in one feedback request")


class TopicsConfig(_Strict):
    events: str = "scoring.events"
    feedback: str = "scoring.feedback"
    drift: str = "scoring.drift"
    audit: str = "scoring.audit"


class SpoolConfig(_Strict):
    directory: Path = Path("spool")
    max_bytes: int = Field(1 << 30, ge=1 << 16, description="beyond this, new events are dropped and counted")
    segment_bytes: int = Field(64 << 20, ge=1 << 12)
    fsync: bool = Field(False, description="fsync every append: survives a machine crash, costs throughput")


class KafkaConfig(_Strict):
    enabled: bool = True
    bootstrap_servers: str = "127.0.0.1:9092"
    topics: TopicsConfig = TopicsConfig()
    partitions: int = Field(6, ge=1, description="for topics the gateway creates")
    replication_factor: int = Field(1, ge=1)
    queue_size: int = Field(100_000, ge=1, description="events held in memory before the spool takes them")
    linger_ms: int = Field(500, ge=0, description="wait this long to fill Kafka batches (delays events, not answers)")
    compression: Literal["lz4", "zstd", "gzip", "none"] = "lz4"
    stall_timeout_ms: int = Field(2000, ge=100, description="an event unconfirmed for this long (not counting time the shipper could not run) goes to the spool")
    shipper_nice: int = Field(19, ge=0, le=19, description="how much lower the event shipper's CPU priority is than the gateway's (0: the same)")
    spool: SpoolConfig = SpoolConfig()


Correction = Literal["bonferroni", "bh", "none"]


class DriftConfig(_Strict):
    """How the drift consumer windows, tests and alerts (each key is explained in docs/drift.md)."""
    group_id: str = "drift-monitor"
    window_by: Literal["count", "time"] = Field("count", description="close windows by row count or by event time")
    window_size: float = Field(200, gt=0, description="rows (count) or seconds (time) per window")
    window_slide: float | None = Field(None, gt=0, description="rows or seconds between windows; unset: tumbling")
    lateness_seconds: float = Field(5.0, ge=0, description="time windows: how late an event may arrive")
    window_max_rows: int = Field(5_000, ge=100, description="rows kept and tested per window; more are sampled uniformly")
    min_window_rows: int = Field(30, ge=1, description="time windows with fewer rows are not tested")
    alpha: float = Field(0.01, gt=0, lt=1, description="significance level after the correction")
    correction: Correction = "bonferroni"
    effect: Literal["ks", "psi", "js", "wasserstein"] = Field("ks", description="the effect size min_effect applies to")
    min_effect: float = Field(0.1, ge=0, description="a significant column drifts only past this effect size")
    compare_previous: bool = Field(True, description="also test each window against the one before it")
    alarm_k: int = Field(2, ge=1, description="alert when k of ...")
    alarm_n: int = Field(3, ge=1, description="... the last n windows of a version drifted")
    classifier_every: int = Field(0, ge=0, description="domain classifier on every n-th window (0: never) ...")
    classifier_on_drift: bool = Field(True, description="... and on every window that drifted")
    classifier_max_rows: int = Field(300, ge=10, description="rows per side the classifier fits on")
    classifier_permutations: int = Field(19, ge=1, le=999, description="permutations for its p-value")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus /metrics here")
    poll_timeout_ms: int = Field(500, gt=0)
    max_batch: int = Field(20_000, gt=0, description="records per Kafka fetch")

    @model_validator(mode="after")
    def _consistent(self) -> "DriftConfig":
        if self.window_by == "count" and not float(self.window_size).is_integer():
            raise ValueError("window_size must be a whole number of rows when window_by is 'count'")
        if self.window_slide is not None:
            panes = self.window_size / self.window_slide
            if self.window_slide > self.window_size or abs(panes - round(panes)) > 1e-9:
                raise ValueError("window_slide must divide window_size (a window is a whole number of slides)")
        if self.alarm_k > self.alarm_n:
            raise ValueError("alarm_k must not exceed alarm_n")
        return self


class GatewayConfig(_Strict):
    server: ServerConfig = ServerConfig()
    model_repository: Path = Path("models")
    models: dict[str, ModelConfig]
    kafka: KafkaConfig = KafkaConfig()
    drift: DriftConfig = DriftConfig()
    admin: AdminConfig = AdminConfig()
    feedback: FeedbackConfig = FeedbackConfig()

    @field_validator("models")
    @classmethod
    def _at_least_one(cls, value: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        if not value:
            raise ValueError("at least one model must be configured")
        return value


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(text: str, path: Path) -> str:
    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{path}: environment variable {name} is not set and has no default; "
                          f"set it or write ${{{name}:-default}}")
    return _ENV.sub(replace, text)


POLICIES = ("shadow", "ab", "canary", "blue_green", "bandit")


def error_key(loc: tuple, route_at_top: bool = False) -> str:
    """A validation error's dotted key, without the union tag pydantic puts after a route."""
    parts = [str(p) for p in loc]
    keep = [p for i, p in enumerate(parts)
            if not (p in POLICIES and ((i > 0 and parts[i - 1] == "route") or (i == 0 and route_at_top)))]
    return ".".join(keep)


def _describe(path: Path, error: dict[str, Any]) -> str:
    key = error_key(error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        fix = "remove it or correct its spelling (see config/demo.yaml for the known keys)"
        return f"{path}: {key}: unknown key; {fix}"
    if kind == "missing":
        return f"{path}: {key}: required key is missing; add it"
    msg = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    got = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"{path}: {key}: {msg}{got}"


def load_config(path: str | Path) -> GatewayConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror}); check the path") from None
    try:
        raw = yaml.safe_load(_expand_env(text, path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with at least 'models'")
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(path, e) for e in exc.errors())) from None
    def beside_config(p: Path) -> Path:
        return p if p.is_absolute() else (path.parent / p).resolve()

    spool = config.kafka.spool.model_copy(update={"directory": beside_config(config.kafka.spool.directory)})
    return config.model_copy(update={
        "model_repository": beside_config(config.model_repository),
        "kafka": config.kafka.model_copy(update={"spool": spool}),
    })
