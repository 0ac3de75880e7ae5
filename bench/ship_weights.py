"""Install a training run's exported weights as the shipped ones, with their val scores in the card.

``medfusion train`` exports ``MODEL.safetensors`` and a model card into its run folder. This
script scores that model on every Harvard val pair (the code path of ``medfusion evaluate``:
8-bit levels, Y channel of colour images), next to the ``average`` rule, writes the card's
``validation`` block (per task: the eight selection metrics, average's, and the metrics on which
the model beats average), ``reproduce`` and ``trained_on``, and copies the weights, their ONNX
export and the card into ``MedFusionLib/weights`` (the card's ``sha256`` is of the weights file and
``onnx.sha256`` of the export, both copied unchanged).

    python bench/ship_weights.py runs/haf-full --data ../shared/data/harvard \
        --trained-on "NVIDIA H200 (fp16 autocast), then CPU fine-tuning (fp32)" \
        --reproduce "medfusion train ... ; medfusion train ..."
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
SCORING = ("MedFusionLib.evaluation.metrics on the 8-bit scale, Y channel for PET/SPECT, output rounded to 8 bits "
           "(the code path of `medfusion evaluate`); means over all val pairs of each task")


def validation_block(name: str, config: dict, weights: Path, data: Path) -> dict:
    """The ``validation`` block of a model card: every val pair of every Harvard task."""
    import torch
    from safetensors.torch import load_file

    from MedFusionLib.datasets.harvard import HARVARD_TASKS, load_harvard_pairs_array
    from MedFusionLib.models import create_model
    from MedFusionLib.training.validation import SELECTION_METRICS, ValidationSet

    model = create_model(name, pretrained=False, **config)
    model.load_state_dict(load_file(str(weights)), strict=True)
    pairs, tasks = load_harvard_pairs_array(data, HARVARD_TASKS, "val")
    validation = ValidationSet.build(pairs, tasks, 0)
    scores = validation.evaluate(model.eval(), torch.device("cpu"))
    block = {"split": "val (Harvard pairs.csv, by case)", "scoring": SCORING, "tasks": {}}
    for task, values in scores.items():
        average = validation.average[task]
        block["tasks"][task] = {
            "pairs": len(validation.pairs[task]),
            name: {m: round(values[m], 4) for m in SELECTION_METRICS},
            "average": {m: round(average[m], 4) for m in SELECTION_METRICS},
            "beats_average_on": [m for m in SELECTION_METRICS if values[m] > average[m]],
        }
    return block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder holding MODEL.safetensors and MODEL.json")
    parser.add_argument("--data", type=Path, required=True, help="the Harvard folder (pairs.csv)")
    parser.add_argument("--trained-on", required=True, help="hardware and precision, for the card")
    parser.add_argument("--reproduce", required=True, help="the commands that reproduce the weights")
    parser.add_argument("--note", default="", help="anything else the card should say about training")
    parser.add_argument("--initialised-from", type=Path, metavar="CARD",
                        help="card of the weights this run started from (init_weights): its training record "
                             "goes into this card as training.initialised_from")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPOSITORY))
    from MedFusionLib.core.files import sha256_of
    from MedFusionLib.models.pretrained import WEIGHTS_DIR

    cards = [p for p in args.run.glob("*.json") if p.with_suffix(".safetensors").is_file()]
    if len(cards) != 1:
        parser.error(f"{args.run}: expected one MODEL.json beside MODEL.safetensors, found {len(cards)}")
    card_path = cards[0]
    weights = card_path.with_suffix(".safetensors")
    card = json.loads(card_path.read_text())
    if sha256_of(weights) != card["sha256"]:
        parser.error(f"{weights} does not match the sha256 of {card_path}")
    card["validation"] = validation_block(card["name"], card["config"], weights, args.data)
    card["reproduce"] = args.reproduce
    card["trained_on"] = args.trained_on
    if args.initialised_from:
        start = json.loads(args.initialised_from.read_text())
        card["training"]["initialised_from"] = {"sha256": start["sha256"], **start["training"]}
    if args.note:
        card["training_note"] = args.note
    card["sha256"] = card.pop("sha256")  # last, as export writes it
    graph = weights.with_suffix(".onnx")  # the export for the CPU runtimes, recorded in card["onnx"]
    if not graph.is_file() or sha256_of(graph) != card.get("onnx", {}).get("sha256"):
        parser.error(f"{graph} is missing or does not match the card's onnx.sha256 (re-run the export)")
    shutil.copyfile(graph, WEIGHTS_DIR / graph.name)
    shutil.copyfile(weights, WEIGHTS_DIR / weights.name)
    (WEIGHTS_DIR / card_path.name).write_text(json.dumps(card, indent=2) + "\n")
    for task, values in card["validation"]["tasks"].items():
        print(f"{card['name']} {task}: beats average on {len(values['beats_average_on'])}/8 "
              f"({', '.join(values['beats_average_on'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
