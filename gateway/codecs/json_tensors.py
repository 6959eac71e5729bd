"""The JSON text of Open Inference Protocol (V2) tensors, written straight from numpy arrays.

One writer for every place a tensor leaves as JSON: the gateway's responses, and the scoring
logs the workers write for the event records (whose bytes must agree with the responses'). It
runs once per logged model answer on a worker and once per response on the request loop, so
it is built for speed: a tensor's `{"name":..,"datatype":..,"shape":..,"data":` prefix is
cached per (name, dtype, shape), and the data is one orjson call on the array as it is; an
array of two or more dimensions comes back nested and is flattened in its text (numbers and
booleans contain no brackets), which costs less than asking numpy for a flat copy first.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import orjson

from .datatypes import NUMPY_TO_V2

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_PREFIXES: dict[tuple[str, int, tuple[int, ...]], tuple[bytes, int]] = {}


def contiguous(value: Any) -> Any:
    """orjson's `default`: it hands over the arrays it cannot write as they are (not
    C-contiguous); this gives it a contiguous copy, written as ndarray.ravel() would give it."""
    if isinstance(value, np.ndarray) and not value.flags.c_contiguous:
        return np.ascontiguousarray(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _prefix(name: str, array: np.ndarray) -> tuple[bytes, int]:
    key = (name, array.dtype.num, array.shape)
    cached = _PREFIXES.get(key)
    if cached is None:
        datatype = NUMPY_TO_V2.get(array.dtype)
        if datatype is None:
            raise TypeError(f"no Open Inference Protocol datatype for numpy dtype {array.dtype}")
        if len(_PREFIXES) > 10_000:  # shapes vary with rows: keep the cache bounded
            _PREFIXES.clear()
        cached = _PREFIXES[key] = (
            b'{"name":' + orjson.dumps(name) + b',"datatype":"' + datatype.encode() + b'","shape":'
            + orjson.dumps(array.shape) + b',"data":', array.ndim)
    return cached


def write_tensors(arrays: Mapping[str, np.ndarray], parts: list[bytes]) -> None:
    """Appends the JSON list of `arrays` as V2 tensors to `parts` (to be joined).
    Raises TypeError for an array JSON cannot hold (strings, objects)."""
    parts.append(b"[")
    for name, array in arrays.items():
        prefix, ndim = _prefix(name, array)
        data = orjson.dumps(array if ndim else array.reshape(1), option=_NUMPY, default=contiguous)
        if ndim > 1:
            data = b"[" + data.replace(b"[", b"").replace(b"]", b"") + b"]"
        parts += (prefix, data, b"},")
    if arrays:
        parts[-1] = b"}"  # no comma after the last tensor
    parts.append(b"]")


def tensors_json(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The JSON list of `arrays` as V2 tensors (name, datatype, shape, flat row-major data)."""
    parts: list[bytes] = []
    write_tensors(arrays, parts)
    return b"".join(parts)
