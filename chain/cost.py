"""How many GPU-hours a step costs, for the dry run and the critical path: measured, from the
records of finished runs of the same config (their wall seconds x processes), else estimated
from the config (the images it trains on: epochs x dataset, or iterations x batch) and the
stage's throughput per GPU in the resources file. Estimates, said to be so."""
from __future__ import annotations

import statistics
from pathlib import Path

from kdcl_common import records
from transfer import backends, naming

from .plan import Step
from .resources import ResourceTable

DATASET_IMAGES = {"imagenet": 1_281_167, "cifar100": 50_000}  # training images


def config_name(step: Step) -> str:
    if step.stage == "pretrain":
        return str(Path(step.config).relative_to("pretrain/configs").with_suffix(""))
    return naming.config_name(step.config) if step.stage == "transfer" else step.stage


def pretrain_images(config: Path) -> int | None:
    """Epochs x training images of a pre-training config, read without resolving its data
    paths (their variables need not be set for a plan)."""
    try:
        from omegaconf import OmegaConf

        from kdcl_common.config import read_yaml

        cfg = OmegaConf.create(read_yaml(config))
    except Exception:  # noqa: BLE001 - no environment, or a config the stage will refuse
        return None
    epochs = OmegaConf.select(cfg, "optim.epochs", default=None)
    dataset = OmegaConf.select(cfg, "data.dataset", default="imagefolder")
    root = str(OmegaConf.select(cfg, "data.root", default="", throw_on_resolution_failure=False)
               or "")
    if dataset == "synthetic":
        per_class = OmegaConf.select(cfg, "data.synthetic.train_per_class", default=0)
        images = per_class * OmegaConf.select(cfg, "data.synthetic.classes", default=0)
    else:
        images = DATASET_IMAGES.get(dataset) or (DATASET_IMAGES["imagenet"]
                                                 if "IMAGENET" in root.upper() else None)
    return int(epochs * images) if epochs and images else None


class Estimator:
    def __init__(self, table: ResourceTable, folder: str = records.DEFAULT_FOLDER):
        self.table = table
        runs: dict[tuple, dict[str, float]] = {}
        for _, r in records.scan([Path(folder)]):
            if isinstance(r, dict) and isinstance(r.get("wall_seconds"), (int, float)):
                key = (r.get("stage"), r.get("config"), r.get("backend"))
                runs.setdefault(key, {})[r.get("run_dir")] = \
                    r["wall_seconds"] * (r.get("world_size") or 1) / 3600
        self.measured = {k: (statistics.mean(v.values()), len(v)) for k, v in runs.items()}

    def _measured(self, step: Step) -> tuple[float, int] | None:
        backend = step.backend or "pytorch"
        return self.measured.get((step.stage, config_name(step), backend))

    def _configured(self, step: Step) -> tuple[float, int] | None:
        res = self.table.of(step)
        rate = res.images_per_second_per_gpu
        if step.stage == "results" or not res.gpus_per_node:
            return 0.0, 0
        if not rate:
            return None
        if step.stage == "pretrain":
            images = pretrain_images(Path(step.config))
        elif step.stage == "transfer":
            try:
                images = backends.get(step.backend).load().training_images(
                    Path(step.config), res.gpus)
            except Exception:  # noqa: BLE001 - its framework is not installed here
                images = None
        else:
            images = None
        return (images / rate / 3600, images) if images else None

    def gpu_hours(self, step: Step) -> float | None:
        found = self._measured(step) or self._configured(step)
        return found[0] if found else None

    def wall_hours(self, step: Step) -> float | None:
        hours, gpus = self.gpu_hours(step), self.table.of(step).gpus
        return None if hours is None else hours / max(gpus, 1)

    def describe(self, step: Step) -> str:
        measured = self._measured(step)
        if measured:
            return f"~{measured[0]:,.1f} GPU-h, the mean of {measured[1]} finished run(s)"
        configured = self._configured(step)
        if configured is None:
            return "no estimate (set images_per_second_per_gpu in the resources)"
        if configured[1] == 0:
            return "no GPU"
        rate = self.table.of(step).images_per_second_per_gpu
        return (f"~{configured[0]:,.1f} GPU-h estimated: {configured[1]:,} training images "
                f"at {rate:g} img/s per GPU")
