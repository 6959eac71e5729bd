"""Open Inference Protocol datatypes and their numpy equivalents, in one table."""
from __future__ import annotations

import numpy as np

V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}
NUMERIC = frozenset(k for k in V2_TO_NUMPY if k != "BOOL")

# ONNX tensor element type names (as onnxruntime reports them) -> V2 names.
ONNX_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


_BY_DTYPE_STR = {dtype.str: name for dtype, name in NUMPY_TO_V2.items()}  # a str lookup: cheap per tensor


def v2_datatype(dtype: np.dtype) -> str:
    return v2_datatype_of(dtype.str)


def v2_datatype_of(dtype_str: str) -> str:
    """The V2 name of a numpy dtype given as its `.str` (e.g. '<f4'), as frames carry it."""
    name = _BY_DTYPE_STR.get(dtype_str)
    if name is None:
        raise ValueError(f"no Open Inference Protocol datatype for numpy dtype {dtype_str}")
    return name
