"""Multi-node training on a Ray cluster: Ray Train starts one process per worker, sets up torch.distributed
(NCCL on GPUs, gloo on CPUs) and each process runs the same ``Trainer.fit`` as under torchrun.

    dataengine train --shards s3://b/run/shards/ --out /mnt/shared/ckpt --recipe gpu-dit-b \\
        --ray-workers 16 --address auto                                   # 16 GPU workers on the cluster

``--out`` must be a folder every worker can reach (a shared filesystem): rank 0 writes checkpoints and
metrics there and every rank resumes from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainer.dit.train import TrainConfig, Trainer


def _worker_loop(args: dict[str, Any]) -> None:
    """What each Ray Train worker runs: the process group is already up (``Dist.setup`` finds it)."""
    Trainer(TrainConfig.model_validate(args["config"]), Path(args["out"])).fit()


def train_on_ray(
    config: TrainConfig, out: Path, workers: int, use_gpu: bool, address: str | None = None
) -> None:
    """Run ``config`` on ``workers`` Ray Train workers (one GPU each when ``use_gpu``)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=True
        )
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config.model_dump(mode="json"), "out": str(out.resolve())},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(name=f"dataengine-{config.name}", storage_path=str((out / "ray").resolve())),
    )
    trainer.fit()
