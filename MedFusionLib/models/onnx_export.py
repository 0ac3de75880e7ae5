"""Export a fusion network to ONNX for the CPU runtimes (OpenVINO, ONNX Runtime).

The exported graph takes the inputs of :meth:`FusionNet.forward <MedFusionLib.models.base.FusionNet>`,
``a`` and ``b``: ``(N, 1, H, W)`` float32 in [0, 1], with N, H and W dynamic, and returns ``fused``
``(N, 1, H, W)``. It is the network's inference form (BatchNorms folded, HAF's gate pairs fused:
:func:`~MedFusionLib.models.optimize.prepare_for_inference`), traced once by torch's TorchScript
exporter. Tracing freezes the Python decisions the torch code makes per input size, so:

- padding to ``size_multiple`` happens outside the graph (the runtime pads in numpy, as
  :func:`~MedFusionLib.models.blocks.pad_to_multiple` does): the trace is taken at a size that is
  already a multiple, where the network pads nothing;
- a network whose structure depends on the size (the Laplacian pyramid's number of levels) equals
  its graph only from ``min_size`` pixels a side up, recorded in the card.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch

from MedFusionLib.core.files import atomic_output, sha256_of
from MedFusionLib.models.base import FusionNet
from MedFusionLib.models.optimize import prepare_for_inference

OPSET = 17  # read by every OpenVINO and ONNX Runtime release of the last three years


def traced_min_size(model: FusionNet) -> int:
    """The smallest slice side on which ``model``'s exported graph equals the network (1: any)."""
    return int(getattr(model, "min_traced_size", 1))


def onnx_bytes(model: FusionNet) -> bytes:
    """``model`` (any :class:`FusionNet`, on the CPU) as a serialised ONNX graph."""
    network = prepare_for_inference(copy.deepcopy(model).cpu(), torch.device("cpu"), channels_last=False)
    multiple = max(network.size_multiple, network.window_step, 8)
    side = max(traced_min_size(network), 64)
    side = -(-side // multiple) * multiple  # a multiple of the network's grid: nothing padded while tracing
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, side, side + multiple, generator=generator)
    b = torch.rand(1, 1, side, side + multiple, generator=generator)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns about every Python branch it freezes and about its own
        # deprecation; the branches are handled above (sizes, min_size), and the output is tested.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network, (a, b), buffer, input_names=["a", "b"], output_names=["fused"],
            dynamic_axes={"a": dynamic, "b": dynamic, "fused": dynamic}, opset_version=OPSET, dynamo=False,
        )
    return buffer.getvalue()


def export_onnx(model: FusionNet, path: str | Path) -> dict:
    """Write ``model``'s ONNX graph to ``path`` (atomically) and return its card section.

    The section holds the file's name and sha256, the opset, the torch version that exported it,
    the slice engine's crop geometry and ``min_size``; the runtimes read all of it from the card
    without torch (:mod:`MedFusionLib.core.model_files`).
    """
    path = Path(path)
    with atomic_output(path, overwrite=True) as temporary:
        temporary.write_bytes(onnx_bytes(model))
    path.chmod(0o644)  # package data: readable by every user of an installation
    return {
        "file": path.name,
        "sha256": sha256_of(path),
        "opset": OPSET,
        "exported_with": f"torch {torch.__version__}",
        "inputs": "a, b: (N, 1, H, W) float32 in [0, 1]; output fused: (N, 1, H, W)",
        "receptive_radius": model.receptive_radius,
        "size_multiple": model.size_multiple,
        "window_step": model.window_step,
        "min_size": traced_min_size(model),
    }


def ship_onnx(name: str, weights_dir: str | Path | None = None) -> Path:
    """Export the shipped model ``name`` to ``weights_dir/NAME.onnx`` and record it in its card.

    A learned network is built from its verified safetensors and its card gains (or has replaced)
    the ``onnx`` section; a training-free rule is recorded under its name in
    ``training-free.json``. ``weights_dir`` defaults to the package's weights folder.
    """
    import json

    from MedFusionLib.core import model_files
    from MedFusionLib.models.registry import create_model, model_spec

    weights_dir = Path(weights_dir) if weights_dir is not None else model_files.WEIGHTS_DIR
    spec = model_spec(name)
    section = export_onnx(create_model(name, pretrained=True), weights_dir / f"{name}.onnx")
    card_path = weights_dir / (f"{name}.json" if spec.learned else model_files.TRAINING_FREE_CARD)
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if spec.learned:
        card["onnx"] = section
    else:
        card[name] = {"description": spec.description, "onnx": section}
    with atomic_output(card_path, overwrite=True) as temporary:
        temporary.write_text(json.dumps(card, indent=2) + "\n")
    card_path.chmod(0o644)
    return weights_dir / f"{name}.onnx"
