"""Train several configurations at once on one GPU, within a wall-clock deadline.

How the full-size networks and the retrained light ones were trained during a short lease of a GPU
machine (README "Choosing a model"). Each entry of a plan (JSON: ``[{"name", "model",
"overrides"}]``) runs ``MedFusionLib.training.trainer.train`` in its own process, exactly as
``medfusion train --model MODEL --config OVERRIDES.json --device cuda`` would, on Harvard pairs
given as arrays (``--arrays``: an ``.npz`` with ``train_pairs``, ``val_pairs`` ``(N, 2, 256, 256)``
uint8 and ``val_tasks``, written here by ``--write-arrays DATA``). A run still going at the
deadline is stopped; its ``best.pt`` (written atomically at each validation) is exported as
``MODEL.safetensors`` + card like any other.

The GPU machine's image has torch but not SimpleITK, which the package imports for file reading
only; training never reads a file, so when SimpleITK is missing a placeholder module stands in
for it (calling any of its functions raises).

    python bench/device_training_sweep.py --write-arrays ../shared/data/harvard --arrays harvard.npz
    python bench/device_training_sweep.py --arrays harvard.npz --plan plan.json --out runs --deadline 400
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent


def _placeholder_for_missing_simpleitk() -> None:
    """Let ``import SimpleITK`` succeed where it is not installed; any use of it raises."""
    if "SimpleITK" in sys.modules or importlib.util.find_spec("SimpleITK") is not None:
        return

    class Unavailable:
        """Stands for one SimpleITK name (module-level constants are read at import); calling raises."""

        def __init__(self, name: str) -> None:
            self.name = name

        def __call__(self, *args, **kwargs):
            raise ImportError(f"SimpleITK.{self.name}: SimpleITK is not installed on this machine")

    def missing(name: str):
        if name.startswith("__"):  # hasattr() and inspect probe dunders: a plain module has none
            raise AttributeError(name)
        return Unavailable(name)

    module = types.ModuleType("SimpleITK")
    module.__getattr__ = missing  # type: ignore[attr-defined]
    sys.modules["SimpleITK"] = module


def write_arrays(data: Path, out: Path) -> None:
    """Harvard train and val pairs of every task as one compressed ``.npz``."""
    import numpy as np

    from MedFusionLib.datasets.harvard import HARVARD_TASKS, load_harvard_pairs_array

    train_pairs, _ = load_harvard_pairs_array(data, HARVARD_TASKS, "train")
    val_pairs, val_tasks = load_harvard_pairs_array(data, HARVARD_TASKS, "val")
    np.savez_compressed(out, train_pairs=train_pairs.numpy(), val_pairs=val_pairs.numpy(),
                        val_tasks=np.array(val_tasks))
    print(f"wrote {out}: {len(train_pairs)} train and {len(val_pairs)} val pairs, {out.stat().st_size / 1e6:.1f} MB")


def run_one(arrays: Path, entry: dict, out: Path, threads: int) -> None:
    """One plan entry: train, then export the best checkpoint into its run folder."""
    _placeholder_for_missing_simpleitk()
    import numpy as np
    import torch

    from MedFusionLib.training.config import load_config
    from MedFusionLib.training.trainer import train

    torch.set_num_threads(threads)
    data = np.load(arrays)
    overrides_path = out / "overrides.json"
    out.mkdir(parents=True, exist_ok=True)
    overrides_path.write_text(json.dumps({"model": entry["model"], **entry.get("overrides", {})}, indent=2) + "\n")
    config = load_config(entry["model"], overrides_path)
    metadata = {
        "data": "../shared/data/harvard",
        "dataset": "Harvard Whole Brain Atlas pairs (pairs.csv)",
        "tasks": ["CT-MRI", "PET-MRI", "SPECT-MRI"],
        "train_pairs": int(len(data["train_pairs"])),
        "val_pairs": int(len(data["val_pairs"])),
        "split": "pairs.csv 'split' column (by case)",
        "command": f"medfusion train --model {entry['model']} --data ../shared/data/harvard --task all "
                   f"--out runs/{entry['name']} --config {entry['name']}.json --device cuda",
        "hardware": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "runner": "bench/device_training_sweep.py (the runs of one plan in parallel on one GPU)",
    }
    train(config, torch.from_numpy(data["train_pairs"]), out, val_pairs=torch.from_numpy(data["val_pairs"]),
          val_tasks=[str(t) for t in data["val_tasks"]], device="cuda" if torch.cuda.is_available() else "cpu",
          progress=False, metadata=metadata)


def export_run(run: Path) -> str:
    """Export ``run/best.pt`` into ``run``; one line saying what happened."""
    _placeholder_for_missing_simpleitk()
    from MedFusionLib.training.export import export_weights

    best = run / "best.pt"
    if not best.is_file():
        return f"{run.name}: no best.pt (failed before its first validation)"
    weights, card_path = export_weights(best, run)
    card = json.loads(card_path.read_text())
    training = card["training"]
    return (f"{run.name}: selected epoch {training['selected_epoch']}/{training['epochs_planned']} "
            f"(ran {training.get('run_epochs')} epochs, {training.get('run_seconds')} s), "
            f"score {card['validation_during_training']['score']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arrays", type=Path, required=True, help=".npz of Harvard pairs (read, or written)")
    parser.add_argument("--write-arrays", type=Path, metavar="DATA", help="write --arrays from this Harvard folder")
    parser.add_argument("--plan", type=Path, help="JSON list of runs: name, model, overrides")
    parser.add_argument("--out", type=Path, help="folder of run folders")
    parser.add_argument("--deadline", type=float, default=400.0, help="seconds before unfinished runs are stopped")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPOSITORY))
    if args.write_arrays:
        write_arrays(args.write_arrays, args.arrays)
        return 0
    plan = json.loads(args.plan.read_text())
    if args.worker:
        entry = next(e for e in plan if e["name"] == args.worker)
        run_one(args.arrays, entry, args.out / entry["name"], args.threads)
        return 0

    started = time.monotonic()
    processes = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for entry in plan:
        log = open(args.out / f"{entry['name']}.log", "w")  # noqa: SIM115  (open while the worker runs)
        command = [sys.executable, __file__, "--arrays", str(args.arrays), "--plan", str(args.plan),
                   "--out", str(args.out), "--threads", str(args.threads), "--worker", entry["name"]]
        processes[entry["name"]] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while any(p.poll() is None for p in processes.values()) and time.monotonic() - started < args.deadline:
        time.sleep(2)
    for name, process in processes.items():
        if process.poll() is None:
            process.terminate()
            process.wait(30)
            print(f"{name}: stopped at the deadline ({args.deadline:.0f} s)")
        else:
            print(f"{name}: exit {process.returncode} after about {time.monotonic() - started:.0f} s")
    for entry in plan:
        try:
            print(export_run(args.out / entry["name"]))
        except Exception as error:  # one broken run must not lose the others
            print(f"{entry['name']}: export failed: {error!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
