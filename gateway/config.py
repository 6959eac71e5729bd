"""Typed gateway configuration, validated at start-up.

Every error names the file, the key and what to do about it, so a bad deploy fails before it
serves a request. `${VAR}` and `${VAR:-default}` in the YAML are replaced from the environment.
"""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


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


class ShadowRoute(_Strict):
    policy: Literal["shadow"] = "shadow"
    champion: str
    challengers: list[ChallengerConfig] = []


class ModelConfig(_Strict):
    versions: dict[str, VersionConfig]
    route: ShadowRoute
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
        known = ", ".join(sorted(self.versions)) or "(none)"
        if self.route.champion not in self.versions:
            raise ValueError(f"route.champion '{self.route.champion}' is not one of versions: {known}")
        for c in self.route.challengers:
            if c.version not in self.versions:
                raise ValueError(f"route.challengers version '{c.version}' is not one of versions: {known}")
            if c.version == self.route.champion:
                raise ValueError(f"version '{c.version}' cannot be champion and challenger at once")
        return self


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
    linger_ms: int = Field(20, ge=0, description="wait this long to fill Kafka batches (delays events, not answers)")
    compression: Literal["lz4", "zstd", "gzip", "none"] = "lz4"
    stall_timeout_ms: int = Field(2000, ge=100, description="an unconfirmed event older than this goes to the spool")
    spool: SpoolConfig = SpoolConfig()


Correction = Literal["bonferroni", "bh", "none"]


class DriftConfig(_Strict):
    """How the drift consumer windows and tests events (see docs/drift.md)."""
    group_id: str = "drift-monitor"
    window_rows: int = Field(200, gt=0, description="a window closes after this many rows ...")
    window_seconds: float = Field(60.0, gt=0, description="... or this long after its first event (event time)")
    alpha: float = Field(0.01, gt=0, lt=1, description="significance level after the correction")
    correction: Correction = "bonferroni"
    min_effect: float = Field(0.1, ge=0, le=1, description="a significant feature drifts only past this effect size")
    poll_timeout_ms: int = Field(500, gt=0)
    max_batch: int = Field(1000, gt=0, description="records per Kafka fetch")


class GatewayConfig(_Strict):
    server: ServerConfig = ServerConfig()
    model_repository: Path = Path("models")
    models: dict[str, ModelConfig]
    kafka: KafkaConfig = KafkaConfig()
    drift: DriftConfig = DriftConfig()

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


def _describe(path: Path, error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
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
