"""Scenarios as files: what traffic a run sends, separate from how fast it is sent.

A scenario (YAML, see loadtests/scenarios/) declares the request mix over models and routes,
rows per request, sticky keys, delayed feedback and time phases such as drifted traffic from
minute 1. `RequestFactory` turns it into ready-to-send bytes: bodies are encoded once per
process at start-up, so per request only the id and the sticky key are spliced in.

Request data are the demo wine rows (gateway.models.demo): "train" rows lie inside the demo
models' training alcohol range, "drift" rows (low-alcohol wines) outside it.
"""
from __future__ import annotations

import bisect
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import yaml

from loadtests.httpclient import RequestHead

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
DataRange = Literal["train", "drift"]


class ScenarioError(ValueError):
    """The scenario file cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class RequestKind:
    name: str
    weight: float
    model: str
    version: str | None  # None: the model's configured route decides; else that version directly
    rows: tuple[int, int]  # inclusive range, drawn uniformly per body

    @property
    def path(self) -> str:
        if self.version is None:
            return f"/v2/models/{self.model}/infer"
        return f"/v2/models/{self.model}/versions/{self.version}/infer"


@dataclass(frozen=True)
class Phase:
    at_s: float  # seconds after the run starts (warm-up included)
    data: DataRange
    weights: dict[str, float] | None  # per kind name; None keeps the scenario's weights


@dataclass(frozen=True)
class StickyKeys:
    """Requests carry one of `count` customer keys, so a sticky split can pin each customer."""

    count: int
    parameter: str | None  # V2 request `parameters` key
    header: str | None  # HTTP header


@dataclass(frozen=True)
class Feedback:
    """Ground truth (the rows' true classes) or a reward (1 if the answer was right), sent later by id."""

    kind: Literal["ground_truth", "reward"]
    fraction: float
    delay_s: float
    path: str  # may contain {model}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    requests: tuple[RequestKind, ...]
    phases: tuple[Phase, ...]  # sorted, the first at 0
    sticky_keys: StickyKeys | None
    feedback: Feedback | None
    bodies_per_kind: int
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "source": self.source,
            "requests": [{"name": k.name, "weight": k.weight, "path": k.path, "rows": list(k.rows)}
                         for k in self.requests],
            "phases": [{"at_s": p.at_s, "data": p.data, "weights": p.weights} for p in self.phases],
            "sticky_keys": vars(self.sticky_keys) if self.sticky_keys else None,
            "feedback": vars(self.feedback) if self.feedback else None,
        }


def _keys(where: str, raw: Any, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a mapping")
    unknown = set(raw) - allowed
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(allowed)}")
    missing = required - set(raw)
    if missing:
        raise ScenarioError(f"{where}: missing key(s) {sorted(missing)}")
    return raw


def _data_range(where: str, value: Any) -> DataRange:
    if value not in ("train", "drift"):
        raise ScenarioError(f"{where}: data must be 'train' or 'drift', not {value!r}")
    return value


def _rows(where: str, value: Any) -> tuple[int, int]:
    low, high = (value, value) if isinstance(value, int) else (tuple(value) if isinstance(value, list) else (0, -1))
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        raise ScenarioError(f"{where}.rows: give a positive integer or [min, max], not {value!r}")
    return low, high


def _kind(where: str, raw: Any) -> RequestKind:
    raw = _keys(where, raw, {"name", "weight", "model", "version", "rows"}, {"name", "model"})
    weight = float(raw.get("weight", 1))
    if weight < 0:
        raise ScenarioError(f"{where}.weight must not be negative")
    version = raw.get("version")
    return RequestKind(str(raw["name"]), weight, str(raw["model"]), None if version is None else str(version),
                       _rows(where, raw.get("rows", 1)))


def _phase(where: str, raw: Any, kinds: set[str]) -> Phase:
    raw = _keys(where, raw, {"at_s", "data", "weights"}, {"at_s"})
    weights = raw.get("weights")
    if weights is not None:
        if not isinstance(weights, dict) or set(weights) - kinds:
            raise ScenarioError(f"{where}.weights: a mapping from request names ({sorted(kinds)}) to weights")
        weights = {str(k): float(v) for k, v in weights.items()}
    return Phase(float(raw["at_s"]), _data_range(where, raw.get("data", "train")), weights)


def parse_scenario(raw: Any, source: str = "<inline>") -> Scenario:
    raw = _keys(source, raw, {"name", "description", "requests", "data", "phases", "sticky_keys",
                              "feedback", "bodies_per_kind"}, {"name", "requests"})
    if not isinstance(raw["requests"], list) or not raw["requests"]:
        raise ScenarioError(f"{source}: requests must be a non-empty list")
    kinds = tuple(_kind(f"{source}: requests[{i}]", k) for i, k in enumerate(raw["requests"]))
    names = {k.name for k in kinds}
    if len(names) != len(kinds):
        raise ScenarioError(f"{source}: request names must be unique")
    if sum(k.weight for k in kinds) <= 0:
        raise ScenarioError(f"{source}: at least one request weight must be positive")
    phases = [Phase(0.0, _data_range(source, raw.get("data", "train")), None)]
    phases += [_phase(f"{source}: phases[{i}]", p, names) for i, p in enumerate(raw.get("phases") or [])]
    phases.sort(key=lambda p: p.at_s)
    sticky = None
    if raw.get("sticky_keys") is not None:
        s = _keys(f"{source}: sticky_keys", raw["sticky_keys"], {"count", "parameter", "header"}, {"count"})
        sticky = StickyKeys(int(s["count"]), s.get("parameter"), s.get("header"))
        if sticky.count < 1 or not (sticky.parameter or sticky.header):
            raise ScenarioError(f"{source}: sticky_keys needs count >= 1 and a parameter or a header")
    feedback = None
    if raw.get("feedback") is not None:
        f = _keys(f"{source}: feedback", raw["feedback"], {"kind", "fraction", "delay_s", "path"}, {"kind"})
        feedback = Feedback(f["kind"], float(f.get("fraction", 1.0)), float(f.get("delay_s", 1.0)),
                            str(f.get("path", "/v2/models/{model}/feedback")))
        if feedback.kind not in ("ground_truth", "reward") or not 0 <= feedback.fraction <= 1 \
                or not 0 <= feedback.delay_s <= 300:
            raise ScenarioError(f"{source}: feedback needs kind ground_truth|reward, fraction in [0, 1], "
                                "delay_s in [0, 300]")
    bodies = int(raw.get("bodies_per_kind", 64))
    if not 1 <= bodies <= 10_000:
        raise ScenarioError(f"{source}: bodies_per_kind must be in [1, 10000]")
    return Scenario(str(raw["name"]), str(raw.get("description", "")).strip(), kinds, tuple(phases),
                    sticky, feedback, bodies, source)


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A path to a YAML file, or the name of one in loadtests/scenarios/ (without .yaml)."""
    path = Path(name_or_path)
    if not path.exists() and (SCENARIOS / f"{name_or_path}.yaml").exists():
        path = SCENARIOS / f"{name_or_path}.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        known = ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.yaml")))
        raise ScenarioError(f"{name_or_path}: cannot read it ({exc.strerror}); built-in scenarios: {known}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    return parse_scenario(raw, str(path))


def labelled_wines(data: DataRange) -> tuple[np.ndarray, np.ndarray]:
    """Demo rows and their true classes; the classes are what ground-truth feedback sends."""
    from gateway.models.demo import labelled_wine_rows  # the demo's own row selection

    return labelled_wine_rows(data)


@dataclass(frozen=True)
class _Body:
    rows: int
    tail: bytes  # `"inputs":[...]}`: everything after the id and parameters
    labels: tuple[int, ...]


class Request:
    """One request, ready to send (a plain slotted class: one is built per request, so it is cheap)."""

    __slots__ = ("kind", "request_id", "data", "rows", "labels")

    def __init__(self, kind: int, request_id: str, data: bytes, rows: int, labels: tuple[int, ...]):
        self.kind = kind  # index into Scenario.requests
        self.request_id = request_id
        self.data = data  # the whole HTTP request
        self.rows = rows
        self.labels = labels


class RequestFactory:
    """Builds one generator process's requests; deterministic for a given seed and process."""

    def __init__(self, scenario: Scenario, host: str, base_path: str = "", *, process: int = 0,
                 seed: int = 0, run_id: str | None = None):
        self.scenario = scenario
        self._rng = random.Random(f"{seed}-{process}")
        self._prefix = f"{run_id or uuid.uuid4().hex[:8]}-{process}-"
        self._heads = [RequestHead("POST", base_path + k.path, host) for k in scenario.requests]
        self._feedback_heads: dict[str, RequestHead] = {}
        if scenario.feedback:
            for k in scenario.requests:
                path = base_path + scenario.feedback.path.format(model=k.model)
                self._feedback_heads.setdefault(k.model, RequestHead("POST", path, host))
        self._phase_starts = [p.at_s for p in scenario.phases]
        self._phase_data = [p.data for p in scenario.phases]
        self._phase_weights = []
        for p in scenario.phases:
            weights = [p.weights.get(k.name, 0.0) if p.weights else k.weight for k in scenario.requests]
            total = sum(weights) or 1.0
            self._phase_weights.append([sum(weights[: i + 1]) / total for i in range(len(weights))])
        self._bodies = {data: self._encode_bodies(data, seed * 1000 + process)
                        for data in {p.data for p in scenario.phases}}
        self._sticky: list[tuple[bytes, bytes]] = []
        sticky = scenario.sticky_keys
        if sticky:
            for i in range(sticky.count):
                key = f"customer-{i}"
                param = b'"parameters":' + orjson.dumps({sticky.parameter: key}) + b"," if sticky.parameter else b""
                header = f"{sticky.header}: {key}\r\n".encode() if sticky.header else b""
                self._sticky.append((param, header))

    def _encode_bodies(self, data: DataRange, seed: int) -> list[list[_Body]]:
        rows, labels = labelled_wines(data)
        rng = np.random.default_rng(seed)
        per_kind = []
        for kind in self.scenario.requests:
            bodies = []
            for _ in range(self.scenario.bodies_per_kind):
                n = int(rng.integers(kind.rows[0], kind.rows[1] + 1))
                pick = rng.integers(0, len(rows), size=n)
                tensor = {"name": "input", "shape": [n, rows.shape[1]], "datatype": "FP32", "data": rows[pick].ravel()}
                tail = orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)[1:]
                bodies.append(_Body(n, tail, tuple(int(v) for v in labels[pick])))
            per_kind.append(bodies)
        return per_kind

    def make(self, seq: int, t: float) -> Request:
        """The request number `seq` of this process, due `t` seconds after the run's start."""
        phase = bisect.bisect_right(self._phase_starts, t) - 1 if len(self._phase_starts) > 1 else 0
        random = self._rng.random
        kind = 0
        if len(self._heads) > 1:
            kind = min(bisect.bisect_left(self._phase_weights[phase], random()), len(self._heads) - 1)
        bodies = self._bodies[self._phase_data[phase]][kind]
        body = bodies[int(random() * len(bodies))]
        request_id = self._prefix + str(seq)
        params, header = self._sticky[int(random() * len(self._sticky))] if self._sticky else (b"", b"")
        payload = b"".join((b'{"id":"', request_id.encode(), b'",', params, body.tail))
        return Request(kind, request_id, self._heads[kind].render(payload, header), body.rows, body.labels)

    def wants_feedback(self) -> bool:
        fb = self.scenario.feedback
        return fb is not None and (fb.fraction >= 1.0 or self._rng.random() < fb.fraction)

    def feedback(self, request: Request, response: bytes) -> bytes | None:
        """The feedback request for a scored request, or None if the response cannot be read."""
        fb = self.scenario.feedback
        kind = self.scenario.requests[request.kind]
        body: dict[str, Any] = {"id": request.request_id, "model_name": kind.model}
        if fb.kind == "ground_truth":
            body["ground_truth"] = list(request.labels)
        else:
            try:
                predicted = orjson.loads(response)["outputs"][0]["data"][0]
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                return None
            body["reward"] = 1.0 if predicted == request.labels[0] else 0.0
        return self._feedback_heads[kind.model].render(orjson.dumps(body))
