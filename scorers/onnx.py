"""ONNX models through onnxruntime, with thread counts that suit several workers per machine."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class OnnxScorer:
    batchable = True

    def __init__(self, model_file: str | Path, intra_op_threads: int = 1, inter_op_threads: int = 1):
        options = ort.SessionOptions()
        # Workers share the cores: each session gets its slice, not one thread per core.
        options.intra_op_num_threads = max(1, intra_op_threads)
        options.inter_op_num_threads = max(1, inter_op_threads)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.output_names = [o.name for o in self.session.get_outputs()]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self.output_names, inputs)
        return {name: np.asarray(value) for name, value in zip(self.output_names, results)}
