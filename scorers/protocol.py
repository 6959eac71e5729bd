"""Frames between the gateway and a worker process over a Unix socket pair.

A frame is `<meta_len:u32><body_len:u32><meta JSON><body>`: a small orjson header naming each
array (name, dtype, shape) and the raw array bytes back to back, so arrays cross the process
boundary without a text round trip. Responses come back in request order, tagged by `seq`. A
request the gateway will log says so (`"log": true`); its answer then ends with the request's
scoring log (`scoring_log`, its length in the answer's `"tail"`).
"""
from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson

from gateway.codecs.json_tensors import write_tensors

HEADER = struct.Struct("<II")
MAX_FRAME = 1 << 30


def encode(meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None, tail: bytes = b"") -> bytes:
    """A frame; `tail` (bytes after the arrays, its length in meta["tail"]) carries a request's
    scoring log (`scoring_log`) back to the gateway."""
    parts: list[bytes] = []
    if arrays:
        specs = []
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            specs.append((name, arr.dtype.str, arr.shape))
            parts.append(arr.tobytes())
        meta = {**meta, "arrays": specs}
    if tail:
        meta = {**meta, "tail": len(tail)}
        parts.append(tail)
    head = orjson.dumps(meta)
    body = b"".join(parts)
    return HEADER.pack(len(head), len(body)) + head + body


def scoring_log(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> bytes:
    """A request's inputs and outputs as its event record holds them: the JSON object
    `{"inputs":[...],"outputs":[...]}` of V2 tensors, which the shipper embeds in the record
    unread. The worker writes it, on its own core, for the requests the gateway will log, so
    neither the gateway's loop nor the shipper does. Raises TypeError for arrays JSON cannot hold."""
    parts = [b'{"inputs":']
    write_tensors(inputs, parts)
    parts.append(b',"outputs":')
    write_tensors(outputs, parts)
    parts.append(b"}")
    return b"".join(parts)


_DTYPES: dict[str, np.dtype] = {}


def decode_arrays(meta: dict[str, Any], body: memoryview | bytes) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for name, dtype_str, shape in meta.get("arrays", ()):
        dtype = _DTYPES.get(dtype_str)
        if dtype is None:
            dtype = _DTYPES[dtype_str] = np.dtype(dtype_str)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        arrays[name] = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += nbytes
    return arrays


def split_frames(buf: bytearray | bytes, copy: bool = True) -> tuple[list[tuple[dict[str, Any], bytes | memoryview]], int]:
    """All complete frames at the front of `buf`, and how many bytes they used.

    Bodies are copies, so `buf` can be trimmed afterwards; with `copy=False` (for an immutable
    `bytes` buffer) they are views into it, which saves a copy per frame.
    """
    frames: list[tuple[dict[str, Any], bytes | memoryview]] = []
    view = memoryview(buf)
    pos = 0
    size = len(buf)
    try:
        while size - pos >= HEADER.size:
            meta_len, body_len = HEADER.unpack_from(buf, pos)
            if meta_len + body_len > MAX_FRAME:
                raise ValueError(f"frame of {meta_len + body_len} bytes exceeds the {MAX_FRAME} limit")
            end = pos + HEADER.size + meta_len + body_len
            if end > size:
                break
            start = pos + HEADER.size
            meta = orjson.loads(view[start : start + meta_len])
            body = view[start + meta_len : end]
            frames.append((meta, bytes(body) if copy else body))
            pos = end
    finally:
        if copy:
            view.release()  # else a bytearray could not be trimmed
    return frames, pos
