"""An exported fusion network run by OpenVINO on the CPU (no torch).

The graph is read from the verified ONNX file (:mod:`~MedFusionLib.core.model_files`) and
compiled for the CPU with its input sizes left dynamic, so every window the engine cuts runs on one
compiled model. Precision is set explicitly: OpenVINO's CPU plugin otherwise picks bf16 by itself
on CPUs that have it, which moves the fused image away from the network's fp32 output.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from MedFusionLib.runtimes.network import RunnableNetwork

# Importing OpenVINO's package sends a usage event to Google Analytics (openvino.tools.ovc, through
# openvino_telemetry, whenever no opt-out file exists in the user's home), and may start a process
# for it. A clinical tool sends nothing about its use; OpenVINO falls back to a silent stub of its
# own when openvino_telemetry cannot be imported, so it is made unimportable here (unless some
# other code of this process has imported it already, which is then that code's choice).
sys.modules.setdefault("openvino_telemetry", None)

import openvino as ov  # noqa: E402  (after the telemetry opt-out above)

_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
_core: ov.Core | None = None
_core_lock = threading.Lock()


def openvino_core() -> ov.Core:
    """The process's one OpenVINO ``Core`` (its plugins load once)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


class OpenVINONetwork(RunnableNetwork):
    """The ONNX graph at ``path`` compiled for OpenVINO's CPU plugin.

    ``geometry``: the card's ``onnx`` section (crop geometry, ``min_size``). ``precision``:
    ``fp32`` or ``bf16``. ``threads``: the plugin's thread count (``None``: one per core), shared
    out between ``streams`` infer requests that may run at once.

    Each calling thread gets its own infer request, so the engine runs single slices side by side
    in threads, each in its own window. One pass runs on the constructing thread first: the first
    passes of two threads at once deadlocked in about one fresh process in fifteen here (pybind11's
    one-time numpy set-up inside OpenVINO waiting for the GIL that the other thread held while it
    waited on a C++ static initialisation), and a first pass made before any thread starts does
    that set-up once, alone.
    """

    runtime = "openvino"

    def __init__(self, model_name: str, path, geometry: dict, precision: str = "fp32",
                 threads: int | None = None, streams: int = 1) -> None:
        super().__init__(model_name, "cpu", precision, geometry["receptive_radius"], geometry["size_multiple"],
                         geometry["window_step"], geometry.get("min_size", 1), streams)
        config = {"INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": str(streams)}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = openvino_core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self._requests = threading.local()
        side = max(self.min_size, self.size_multiple, 8)
        blank = np.zeros((1, 1, side, side), dtype=np.float32)
        self._run(blank, blank)  # the one-time set-up, on this thread alone (see above)

    def _run(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        request.infer({"a": a, "b": b})
        return request.get_output_tensor(0).data.copy()

    def describe(self) -> str:
        return f"openvino {ov.get_version().split('-')[0]} on cpu, {self.precision}"
