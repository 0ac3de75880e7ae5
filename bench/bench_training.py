"""Seconds per training step of each learned model: fp32 against bf16 autocast, by thread count.

Each row times one optimiser step (augmentation, forward, loss, backward, AdamW) of the model's
shipped default configuration (``MedFusionLib/configs/<model>.json``: crop, batch; the default architecture) on
random pairs, best of ``--repeats`` after one warm-up step. On a CPU without native bf16
(AVX2 only) autocast emulates it and is expected to be slower; this table decides.

    python bench/bench_training.py [--models emfusion,haf,densefuse] [--threads 1,2] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch

from MedFusionLib.datasets.augmentation import AugmentationConfig, PairAugmentation
from MedFusionLib.devtools.timing import best_seconds
from MedFusionLib.models import create_model
from MedFusionLib.training.config import default_config
from MedFusionLib.training.trainer import TrainingObjective


def seconds_per_step(model_name: str, dtype: torch.dtype | None, repeats: int) -> float:
    config = default_config(model_name)
    torch.manual_seed(0)
    model = create_model(model_name, pretrained=False, **config.model_config).train()
    objective = TrainingObjective(model, config.objective, config.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    augment = PairAugmentation(AugmentationConfig.from_dict(config.augmentation))
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(config.batch_size, 2, 256, 256)

    def step() -> None:
        crops = augment(batch, generator)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = objective(crops)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return best_seconds(step, repeats, warmups=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="emfusion,haf,densefuse")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| model | crop x batch | threads | fp32 s/step | bf16 s/step | bf16 / fp32 |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        config = default_config(name)
        crop = config.augmentation.get("crop")
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            fp32 = seconds_per_step(name, None, args.repeats)
            bf16 = seconds_per_step(name, torch.bfloat16, args.repeats)
            ratio = bf16 / fp32
            print(f"| {name} | {crop}² x {config.batch_size} | {threads} | {fp32:.2f} | {bf16:.2f} | {ratio:.1f} |")


if __name__ == "__main__":
    main()
