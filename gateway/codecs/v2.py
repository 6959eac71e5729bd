"""Open Inference Protocol (V2) JSON tensors <-> numpy, with errors that say what to fix.

Validation happens here, once, against the model's signature, so the worker only ever sees
arrays of the dtype and shape the model declared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from gateway.errors import BadRequest
from gateway.models.repository import TensorSpec

from .datatypes import NUMERIC, V2_TO_NUMPY
from .json_tensors import tensors_json


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    rows: int
    parameters: dict[str, Any] = field(default_factory=dict)
    requested_outputs: list[str] | None = None


def _shape_ok(shape: list[int], declared: tuple[int, ...]) -> bool:
    return len(shape) == len(declared) and all(d < 0 or d == s for s, d in zip(shape, declared))


def _decode_tensor(i: int, raw: Any, specs: dict[str, TensorSpec]) -> tuple[str, np.ndarray]:
    where = f"inputs[{i}]"
    if not isinstance(raw, dict):
        raise BadRequest("invalid_tensor", f"{where} must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str):
        raise BadRequest("invalid_tensor", f"{where}.name must be a string")
    spec = specs.get(name)
    if spec is None:
        raise BadRequest("unknown_input", f"{where}: the model has no input named '{name}'",
                         expected=sorted(specs))
    datatype = raw.get("datatype")
    if datatype not in NUMERIC:
        raise BadRequest("unsupported_datatype",
                         f"input '{name}': datatype {datatype!r} is not accepted; the model expects {spec.datatype}",
                         expected=spec.datatype)
    shape = raw.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest("invalid_shape", f"input '{name}': shape must be a list of non-negative integers")
    if not _shape_ok(shape, spec.shape):
        raise BadRequest("shape_mismatch",
                         f"input '{name}': shape {shape} does not fit the model's shape {list(spec.shape)} (-1 = any)",
                         expected=list(spec.shape))
    data = raw.get("data")
    if not isinstance(data, list):
        raise BadRequest("invalid_data", f"input '{name}': data must be a list of numbers")
    try:
        array = np.asarray(data, dtype=V2_TO_NUMPY[datatype])
    except (ValueError, TypeError, OverflowError):
        raise BadRequest("invalid_data",
                         f"input '{name}': data is not a rectangular list of {datatype} numbers") from None
    if array.size != math.prod(shape):
        raise BadRequest("shape_mismatch",
                         f"input '{name}': data holds {array.size} values but shape {shape} needs {math.prod(shape)}")
    target = V2_TO_NUMPY.get(spec.datatype, array.dtype)
    return name, array.reshape(shape).astype(target, copy=False)


def decode_infer_request(body: bytes, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                         max_rows: int) -> InferRequest:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("invalid_request", "request body must be a JSON object with an 'inputs' list")
    raw_inputs = payload.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("invalid_request", "request must have a non-empty 'inputs' list")
    specs = {s.name: s for s in inputs}
    arrays: dict[str, np.ndarray] = {}
    for i, raw in enumerate(raw_inputs):
        name, array = _decode_tensor(i, raw, specs)
        if name in arrays:
            raise BadRequest("duplicate_input", f"input '{name}' is given twice")
        arrays[name] = array
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise BadRequest("missing_input", f"inputs missing: {', '.join(missing)}", expected=sorted(specs))
    rows = {a.shape[0] for a in arrays.values()}
    if len(rows) != 1:
        raise BadRequest("shape_mismatch", "all inputs must have the same number of rows (first dimension)")
    n = rows.pop()
    if n < 1:
        raise BadRequest("shape_mismatch", "a request must carry at least one row")
    if n > max_rows:
        raise BadRequest("too_many_rows", f"{n} rows in one request; the limit is {max_rows}", limit=max_rows)
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("invalid_request", "'id' must be a string")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("invalid_request", "'parameters' must be an object")
    requested = payload.get("outputs")
    names = None
    if requested is not None:
        if not isinstance(requested, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested):
            raise BadRequest("invalid_request", "'outputs' must be a list of objects with a 'name'")
        names = [o["name"] for o in requested]
        known = {o.name for o in outputs}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadRequest("unknown_output", f"the model has no output named {', '.join(unknown)}",
                             expected=sorted(known))
    return InferRequest(request_id, arrays, n, parameters, names)


def encode_infer_response(model: str, version: str, request_id: str, outputs: dict[str, np.ndarray],
                          requested: list[str] | None) -> bytes:
    if requested is not None:
        outputs = {n: outputs[n] for n in requested if n in outputs}
    return orjson.dumps({"model_name": model, "model_version": version, "id": request_id,
                         "outputs": orjson.Fragment(tensors_json(outputs))})
