"""Cost of one SSAE training step against one SAELens standard-SAE step.

Both go through SAELens's trainer (`trainer.step(batch)`: forward, loss, backward,
gradient clipping, Adam, schedulers) at the same sizes. Steps are interleaved
(A, B, A, B, ...) so that load from other processes hits both alike, and the
ratio of medians is printed. Target: SSAE / standard <= 1.5.

    python benchmarks/train_step.py [--d-in 640 --d-sae 4096 --batch 4096 --steps 10]
"""

import argparse
import statistics
import time

import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from ssae_lens import TrainingSSAE, TrainingSSAEConfig
from ssae_lens.ssae.training import SSAETrainer


def _trainer_cfg(batch: int, steps: int) -> SAETrainerConfig:
    return SAETrainerConfig(
        total_training_samples=batch * (steps + 10), train_batch_size_samples=batch, lr_end=3e-4
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=640)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = torch.randn(args.batch, args.d_in, device=args.device)
    cfg = _trainer_cfg(args.batch, args.steps)
    cfg.device = args.device

    standard = SAETrainer(
        cfg,
        StandardTrainingSAE(
            StandardTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, device=args.device)
        ),
        iter([]),
    )
    ssae_model = TrainingSSAE(
        TrainingSSAEConfig(d_in=args.d_in, d_sae=args.d_sae, device=args.device)
    )
    ssae_model.fit_normalization(batch)
    ssae = SSAETrainer(cfg, ssae_model, iter([]))

    def timed(trainer: SAETrainer) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.step(batch)
        trainer.n_training_steps += 1
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(2):  # warm-up
        timed(standard), timed(ssae)
    times: dict[str, list[float]] = {"standard": [], "ssae": []}
    for _ in range(args.steps):
        times["standard"].append(timed(standard))
        times["ssae"].append(timed(ssae))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"d_in={args.d_in} d_sae={args.d_sae} batch={args.batch} device={args.device} "
        f"threads={torch.get_num_threads()} steps={args.steps}"
    )
    for name, value in med.items():
        print(f"{name:>9}: {value * 1e3:8.1f} ms/step (median)")
    ratio = med["ssae"] / med["standard"]
    print(
        f"ratio ssae/standard: {ratio:.2f}  (target <= 1.5: {'ok' if ratio <= 1.5 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
