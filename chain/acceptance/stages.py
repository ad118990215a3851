"""The acceptance check's catalogue: each stage's commands (what a user would type), deadlines
per mode, what it needs, and what it reads from its outputs. The transfer stages come from the
backend registry (transfer/backends/__init__.py): each backend's `acceptance` configs on a GPU,
its smoke configs in toy mode, shrunk by the entry's `short_run` overrides."""
from __future__ import annotations

import importlib.util
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kdcl_common import KdclError
from transfer import backends

MODES = ("gpu", "toy")


@dataclass
class Context:
    mode: str
    work: Path
    jobs: int = 1

    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    def records(self, stage: str) -> Path:
        """The records folder of a stage's runs (kdcl_common/records.py)."""
        return self.path("records", stage)

    def read_records(self, stage: str) -> list[dict]:
        from kdcl_common import records

        return [r for _, r in records.scan([self.records(stage)]) if isinstance(r, dict)]

    @property
    def gpu(self) -> bool:
        return self.mode == "gpu"


@dataclass(frozen=True)
class Stage:
    """One stage: its commands (argv lists after `python -m`), deadlines per mode (seconds),
    what it reads from its outputs, and the module it needs (missing: skipped, with why)."""
    name: str
    commands: Callable[[Context], list[list[str]]]
    deadline: dict[str, int]
    collect: Callable[[Context], dict] = lambda ctx: {}
    requires: str | None = None
    needs: tuple[str, ...] = ()  # stages whose success it needs
    env: Callable[[Context], dict] = field(default=lambda ctx: {})


# ----------------------------------------------------------------------------------- data
# (classes, train per class, val per class, image side) of the ImageNet-layout JPEGs, and the
# COCO scenes (train, val, min side, max side), per mode.
IMAGENET = {"gpu": (24, 100, 4, 448), "toy": (4, 16, 4, 64)}
COCO = {"gpu": (40, 12, 600, 800), "toy": (6, 2, 96, 128)}
CIFAR = {"gpu": (500, 100), "toy": (1, 1)}  # images per class: train, test


def data_commands(ctx: Context) -> list[list[str]]:
    classes, train, val, side = IMAGENET[ctx.mode]
    n_train, n_val, lo, hi = COCO[ctx.mode]
    c_train, c_test = CIFAR[ctx.mode]
    return [
        ["pretrain.data.synthetic", str(ctx.path("imagenet")), "--classes", str(classes),
         "--train-per-class", str(train), "--val-per-class", str(val), "--image-size", str(side)],
        ["transfer.coco.synthetic", str(ctx.path("coco")), "--train-images", str(n_train),
         "--val-images", str(n_val), "--min-size", str(lo), "--max-size", str(hi)],
        ["pretrain.data.synthetic", str(ctx.path("cifar100")), "--cifar100",
         "--train-per-class", str(c_train), "--val-per-class", str(c_test)],
    ]


def data_collect(ctx: Context) -> dict:
    out = {}
    for name, pattern in (("imagenet", "*/*/*.jpg"), ("coco", "*2017/*.jpg")):
        files = list(ctx.path(name).glob(pattern))
        out[f"{name}_images"] = len(files)
        out[f"{name}_mb"] = round(sum(f.stat().st_size for f in files) / 2**20, 1)
    return out


# ------------------------------------------------------------------------------ pre-training
BENCH_CONFIG = {"gpu": "pretrain/configs/bench/r50_r18_224.yaml",
                "toy": "pretrain/configs/smoke/kdcl_minlogit.yaml"}
PRETRAIN_CONFIG = {"gpu": "pretrain/configs/acceptance/r50_r18.yaml",
                   "toy": "pretrain/configs/smoke/kdcl_minlogit.yaml"}
# Windows of the benchmark: (warm-up steps, windows, steps per window).
BENCH_WINDOWS = {"gpu": (5, 3, 10), "toy": (1, 1, 2)}


def imagenet_data(ctx: Context) -> list[str]:
    toy = ["data.held_out_per_class=0", "data.workers=1", "optim.batch_size=8"]
    return ["data.dataset=imagefolder", f"data.root={ctx.path('imagenet')}",
            *([] if ctx.gpu else toy)]


def bench_commands(ctx: Context) -> list[list[str]]:
    warmup, windows, steps = BENCH_WINDOWS[ctx.mode]
    options = ["--methods", "kdcl_minlogit", "--no-paired", "--warmup", str(warmup), "--windows",
               str(windows), "--steps", str(steps), "--data-steps", str(steps), "--out",
               str(ctx.path("bench"))]
    compiled = ["--compile"] if ctx.gpu else []  # compiling takes minutes on a CPU
    config = [BENCH_CONFIG[ctx.mode], *imagenet_data(ctx)]
    return [
        ["pretrain.bench", *config, *options, "--only", "data:2", "--only", "kdcl", "--only",
         "train", *compiled, "--name", "decode-cpu"],
        # (the data case's per-stage times are the workers' decode: not measured for the device's)
        ["pretrain.bench", *config, "data.decode=device", *options, "--only", "train",
         "--name", "decode-device"],
    ]


def bench_collect(ctx: Context) -> dict:
    out: dict = {}
    for decode in ("cpu", "device"):
        path = ctx.path("bench", f"decode-{decode}.json")
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        for case, r in report["cases"].items():
            key = f"{case.split(':')[0]}{':compile' if case.endswith(':compile') else ''}"
            key = f"{key}[decode={decode}]" if key in ("train", "data") else key
            out[key] = {"step_ms": round(r["step_ms"]["median"], 2),
                        "images_per_second": round(r["images_per_second"], 1),
                        **({"data_wait_ms": round(r["data_wait_ms"], 2)}
                           if "data_wait_ms" in r else {}),
                        **({"peak_memory_mb": round(r["peak_memory_mb"])}
                           if "peak_memory_mb" in r else {}),
                        **({"us_per_image": {k: round(v) for k, v in
                                             r["stages_us_per_image"].items()}}
                           if r.get("stages_us_per_image") else {})}
    compute = out.get("kdcl", {}).get("images_per_second")
    for decode in ("cpu", "device"):
        e2e = out.get(f"train[decode={decode}]", {}).get("images_per_second")
        if compute and e2e:
            out[f"end_to_end_over_compute[decode={decode}]"] = round(e2e / compute, 3)
    return out


def bench_cifar_commands(ctx: Context) -> list[list[str]]:
    """Each CIFAR student alone, in both memory formats: which one each network prefers on
    this device (the cifar preset's train.channels_last, or students.N.channels_last)."""
    warmup, windows, steps = BENCH_WINDOWS[ctx.mode]
    toy = ["optim.batch_size=32", "data.workers=1"]
    return [["pretrain.bench", "pretrain/configs/bench/cifar_r32_wrn.yaml",
             f"data.root={ctx.path('cifar100')}", f"train.channels_last={flag}",
             *([] if ctx.gpu else toy), "--methods", "kdcl_minlogit", "--no-paired", "--no-data",
             "--no-train", "--only", "solo" if ctx.gpu else "solo:cifar_resnet32",
             "--warmup", str(warmup), "--windows", str(windows), "--steps", str(steps),
             "--out", str(ctx.path("bench")), "--name", f"cifar-{name}"]
            for flag, name in (("false", "contiguous"), ("true", "channels_last"))]


def bench_cifar_collect(ctx: Context) -> dict:
    out: dict = {}
    for name in ("contiguous", "channels_last"):
        path = ctx.path("bench", f"cifar-{name}.json")
        if path.is_file():
            for case, r in json.loads(path.read_text())["cases"].items():
                out.setdefault(case, {})[f"{name}_step_ms"] = round(r["step_ms"]["median"], 2)
    for case in out.values():
        if len(case) == 2:
            case["channels_last_speedup"] = round(case["contiguous_step_ms"]
                                                  / case["channels_last_step_ms"], 3)
    return out


def pretrain_commands(ctx: Context) -> list[list[str]]:
    toy = ["optim.epochs=1"] if not ctx.gpu else []
    return [["pretrain", PRETRAIN_CONFIG[ctx.mode], *imagenet_data(ctx), *toy,
             f"output_root={ctx.path('runs', 'pretrain')}", f"records={ctx.records('pretrain')}"]]


def cifar_commands(ctx: Context) -> list[list[str]]:
    toy = ["data.held_out_per_class=0", "optim.batch_size=50", "data.workers=1"]
    return [["pretrain", "pretrain/configs/cifar/kdcl_minlogit.yaml",
             f"data.root={ctx.path('cifar100')}", "optim.epochs=1", "optim.milestones=[]",
             *([] if ctx.gpu else toy), f"output_root={ctx.path('runs', 'cifar')}",
             f"records={ctx.records('cifar_epoch')}"]]


def pretrain_collect(stage: str) -> Callable[[Context], dict]:
    def collect(ctx: Context) -> dict:
        records = ctx.read_records(stage)
        if not records:
            return {}
        epochs = [row for row in read_jsonl(Path(records[-1]["run_dir"]) / "metrics.jsonl")
                  if row.get("kind") == "epoch"]
        last = epochs[-1] if epochs else {}
        return {"exports": {r["student"]: r["artifact"] for r in records},
                "top1": {r["student"]: round(r["metrics"]["top1"], 2) for r in records},
                "epochs": len(epochs),
                "images_per_second": last.get("images_per_second"),
                "data_wait_seconds": last.get("data_wait_seconds"),
                "train_seconds": last.get("train_seconds"),
                "peak_memory_mb": last.get("peak_memory_mb"),
                "epoch_seconds": last.get("epoch_seconds")}
    return collect


# ---------------------------------------------------------------------------------- transfer
def backbone(ctx: Context) -> str:
    """The export the transfer stages fine-tune: ResNet-50 on the GPU, ResNet-18 in toy mode."""
    student = "resnet50" if ctx.gpu else "resnet18"
    for record in ctx.read_records("pretrain"):
        if record["student"] == student:
            return record["artifact"]
    raise KdclError(f"the pretrain stage exported no {student}")


def transfer_commands(entry: backends.BackendEntry, config: str) -> Callable:
    def commands(ctx: Context) -> list[list[str]]:
        data = str(ctx.path("coco"))
        overrides = [o.format(data=data) for o in
                     (*entry.data_overrides, *(() if ctx.gpu else entry.short_run))]
        return [["transfer", config, "--backbone", backbone(ctx), "--output-root",
                 str(ctx.path("runs", "transfer")), "--records", str(ctx.records(
                     stage_name(entry, config))), *overrides]]
    return commands


def stage_name(entry: backends.BackendEntry, config: str) -> str:
    return f"{entry.name}/{Path(config).stem}"


def transfer_stages(mode: str) -> list[Stage]:
    """One stage per config of each backend: its acceptance configs (GPU) or smoke configs
    (toy), for the architecture the pretrain stage exports."""
    arch = "resnet50" if mode == "gpu" else "resnet18"
    out = []
    for entry in backends.REGISTRY:
        for config in entry.config_files("acceptance" if mode == "gpu" else "smoke", arch):
            name = stage_name(entry, config)
            out.append(Stage(name, transfer_commands(entry, config), {"gpu": 150, "toy": 300},
                             transfer_collect(name), entry.requires, ("data", "pretrain"),
                             lambda ctx: {v.name: str(ctx.path("coco"))
                                          for v in {e.data for e in backends.REGISTRY}}))
    return out


def transfer_collect(stage: str) -> Callable:
    """The result record's metrics and seconds per iteration: from the run's own per-epoch
    metrics (torchvision: the last epoch, warm-up epochs excluded) or its framework's
    per-iteration log (mmengine's scalars, Detectron2's metrics.json: the median)."""
    def collect(ctx: Context) -> dict:
        records = ctx.read_records(stage)
        if not records:
            return {}
        record = records[-1]
        run_dir = Path(record["run_dir"])
        out = {"metrics": {k: v for k, v in record["metrics"].items()
                           if isinstance(v, (int, float))},
               "wall_seconds": record.get("wall_seconds")}
        epochs = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]
        if epochs:  # the project's engine (the torchvision backend): per-epoch metrics
            last, batch = epochs[-1], record["images_per_batch"]
            out["seconds_per_iteration"] = round(last["train_seconds"] * batch
                                                 / max(last["train_images"], 1), 4)
            out["images_per_second"] = last.get("images_per_second")
            out["peak_memory_mb"] = last.get("peak_memory_mb")
        else:
            rows = [r for f in sorted(run_dir.rglob("scalars.json")) + [run_dir / "metrics.json"]
                    for r in read_jsonl(f) if "time" in r]
            times = [r["time"] for r in rows[len(rows) // 4:]]  # past the warm-up
            if times:
                out["seconds_per_iteration"] = round(statistics.median(times), 4)
                out["data_seconds_per_iteration"] = round(statistics.median(
                    r.get("data_time", 0.0) for r in rows[len(rows) // 4:]), 4)
            memory = [r["memory"] for r in rows if "memory" in r]
            if memory:
                out["peak_memory_mb"] = max(memory)
        return out
    return collect


STAGES_BEFORE = [  # the stages before transfer, the same in both modes
    Stage("data", data_commands, {"gpu": 120, "toy": 300}, data_collect),
    Stage("pretrain", pretrain_commands, {"gpu": 150, "toy": 300}, pretrain_collect("pretrain"),
          needs=("data",)),
    Stage("bench", bench_commands, {"gpu": 240, "toy": 300}, bench_collect, needs=("data",)),
    Stage("bench_cifar", bench_cifar_commands, {"gpu": 120, "toy": 300}, bench_cifar_collect,
          needs=("data",)),
    Stage("cifar_epoch", cifar_commands, {"gpu": 90, "toy": 300},
          pretrain_collect("cifar_epoch"), needs=("data",)),
]


def stages(mode: str) -> list[Stage]:
    """Every stage of `mode`, in the order they start."""
    return [*STAGES_BEFORE, *transfer_stages(mode)]


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # mmengine's and Detectron2's logs: one object per line, a partial last one
    return out


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


