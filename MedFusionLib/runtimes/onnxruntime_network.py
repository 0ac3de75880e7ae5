"""An exported fusion network run by ONNX Runtime on the CPU (no torch)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from MedFusionLib.runtimes.network import RunnableNetwork


class OnnxRuntimeNetwork(RunnableNetwork):
    """The ONNX graph at ``path`` in an ONNX Runtime CPU session (fp32; graph optimisations on).

    ``geometry``: the card's ``onnx`` section (crop geometry, ``min_size``). ``threads``: the
    session's intra-op threads (``None``: one per core). ``Session.run`` may be called from several
    threads at once.
    """

    runtime = "onnxruntime"

    def __init__(self, model_name: str, path, geometry: dict, threads: int | None = None, streams: int = 1) -> None:
        super().__init__(model_name, "cpu", "fp32", geometry["receptive_radius"], geometry["size_multiple"],
                         geometry["window_step"], geometry.get("min_size", 1), streams)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads or 0)
        options.log_severity_level = 3  # warnings about unused initialisers are noise
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _run(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.session.run(["fused"], {"a": a, "b": b})[0]

    def describe(self) -> str:
        return f"onnxruntime {ort.__version__} on cpu, {self.precision}"
