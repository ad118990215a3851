"""`python -m chain.acceptance`: every stage of the suite on this machine, unattended, with a
report of what passed and how fast. Run it on a new GPU node before committing a week of GPU
time to it (`bash scripts/gpu_check.sh` installs what a bare node lacks first).

Stages, each the command a user would type, in its own process with its own deadline:

  data          generated ImageNet-size JPEGs (448 px, quality 90), 800 px COCO-format scenes
                (detection and COCO-Stuff layouts) and a CIFAR-100-format set
  bench         pretrain.bench, ResNet-50 + ResNet-18 at 224 px (bf16, channels-last, ICL):
                compute only, end to end with the workers' decode, end to end with
                data.decode=device, and compiled
  bench_cifar   pretrain.bench, ResNet-32 and WRN-16-2 (the cifar preset) each alone,
                contiguous and channels-last
  pretrain      a short KDCL run of the same students on the generated JPEGs, through to export
  cifar_epoch   one CIFAR epoch of ResNet-32 + WRN-16-2 with KDCL-MinLogit
  faster_rcnn   torchvision Faster R-CNN R50-FPN from that export: the paper protocol's model
  mask_rcnn     and precision, 800 px, 2 images per GPU, a few iterations, then evaluation
  sem_fpn       mmseg Semantic FPN and UPerNet from that export, 512x512 crops, a few
  upernet       iterations, then evaluation
  detectron2    Detectron2 Mask R-CNN R50-FPN, where Detectron2 is installed

Without a GPU (`--mode toy`, the default there) the same stages run at toy size on the CPU:
the smoke students and configs, tiny generated sets, a handful of steps, no compilation.
tests/test_acceptance.py runs it so, so the command cannot rot between GPU runs.

The report (`report.json` and `report.md` in --report) is rewritten after every stage: a slow
or failing stage cannot lose the others' results. Each stage's output is in `logs/<stage>.log`
under --work, and all of them in `logs.tar.gz` beside the report (one file to bring back from a
node). Both default to runs/acceptance (not tracked); the reports of real GPU runs that
the README quotes are copied to results/acceptance.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kdcl_common import KdclError
from kdcl_common.io import atomic_write_bytes, atomic_write_json, atomic_write_text

PASSED, FAILED, TIMEOUT, SKIPPED = "passed", "failed", "timeout", "skipped"
MODES = ("gpu", "toy")
WORK_MARKER = ".kdcl-acceptance"


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
    env: Callable[[Context], dict] = lambda ctx: {}


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
             "--no-train", "--only", "solo" if ctx.gpu else "solo:cifar_resnet32", "--warmup", str(warmup), "--windows", str(windows), "--steps",
             str(steps), "--out", str(ctx.path("bench")), "--name", f"cifar-{name}"]
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


TORCHVISION = {"gpu": "transfer/configs/torchvision/acceptance_{}_rcnn_fpn.yaml",
               "toy": "transfer/configs/torchvision/smoke_{}_rcnn_fpn.yaml"}
TORCHVISION_TOY = ["optim.epochs=1", "optim.milestones=[]", "optim.warmup_epochs=0",
                   "data.workers=1", "model.min_size=96", "model.max_size=128"]


def torchvision_commands(detector: str) -> Callable[[Context], list[list[str]]]:
    def commands(ctx: Context) -> list[list[str]]:
        return [["transfer", TORCHVISION[ctx.mode].format(detector), "--backbone", backbone(ctx),
                 "data.dataset=coco", f"data.root={ctx.path('coco')}",
                 *([] if ctx.gpu else TORCHVISION_TOY),
                 f"output_root={ctx.path('runs', 'transfer')}",
                 f"records={ctx.records(detector + '_rcnn')}"]]
    return commands


MMSEG = {"gpu": "transfer/configs/mmseg/{}_r50_acceptance.py",
         "toy": "transfer/configs/mmseg/{}_r18_smoke.py"}


def mmseg_commands(head: str) -> Callable[[Context], list[list[str]]]:
    def commands(ctx: Context) -> list[list[str]]:
        root = ctx.path("coco")
        toy = [f"{split}_dataloader.dataset.data_root={root}" for split in ("train", "val")]
        toy += ["train_cfg.max_iters=4", "train_cfg.val_interval=4", "kdcl.synthetic=False",
                "train_dataloader.num_workers=1", "val_dataloader.num_workers=1"]
        return [["transfer", MMSEG[ctx.mode].format(head), "--backbone", backbone(ctx),
                 *([] if ctx.gpu else toy),
                 f"kdcl.output_root={ctx.path('runs', 'transfer')}",
                 f"kdcl.records={ctx.records(head.replace('-', '_'))}"]]
    return commands


DETECTRON2 = {"gpu": "transfer/configs/detectron2/mask_rcnn_R50_FPN_acceptance.yaml",
              "toy": "transfer/configs/detectron2/mask_rcnn_R18_FPN_smoke.yaml"}


def detectron2_commands(ctx: Context) -> list[list[str]]:
    toy = ["SOLVER.MAX_ITER=4", "SOLVER.STEPS=(3,)", "SOLVER.WARMUP_ITERS=1",
           "SOLVER.CHECKPOINT_PERIOD=4", "DATALOADER.NUM_WORKERS=1"]
    return [["transfer", DETECTRON2[ctx.mode], "--backbone", backbone(ctx),
             f"KDCL.DATA_ROOT={ctx.path('coco')}", "KDCL.SYNTHETIC=False",
             *([] if ctx.gpu else toy), f"KDCL.OUTPUT_ROOT={ctx.path('runs', 'transfer')}",
             f"KDCL.RECORDS={ctx.records('detectron2')}"]]


def transfer_collect(stage: str, images_per_iteration: dict[str, int]) -> Callable:
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
        if epochs:  # torchvision's engine
            last, batch = epochs[-1], images_per_iteration[ctx.mode]
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


def coco_env(ctx: Context) -> dict:
    return {"COCO_STUFF_ROOT": str(ctx.path("coco")), "COCO_ROOT": str(ctx.path("coco"))}


STAGES = [
    Stage("data", data_commands, {"gpu": 120, "toy": 300}, data_collect),
    Stage("pretrain", pretrain_commands, {"gpu": 150, "toy": 300}, pretrain_collect("pretrain"),
          needs=("data",)),
    Stage("bench", bench_commands, {"gpu": 240, "toy": 300}, bench_collect, needs=("data",)),
    Stage("bench_cifar", bench_cifar_commands, {"gpu": 120, "toy": 300}, bench_cifar_collect,
          needs=("data",)),
    Stage("cifar_epoch", cifar_commands, {"gpu": 90, "toy": 300},
          pretrain_collect("cifar_epoch"), needs=("data",)),
    Stage("faster_rcnn", torchvision_commands("faster"), {"gpu": 90, "toy": 300},
          transfer_collect("faster_rcnn", {"gpu": 2, "toy": 4}), "pycocotools",
          ("data", "pretrain")),
    Stage("mask_rcnn", torchvision_commands("mask"), {"gpu": 90, "toy": 300},
          transfer_collect("mask_rcnn", {"gpu": 2, "toy": 4}), "pycocotools",
          ("data", "pretrain")),
    Stage("sem_fpn", mmseg_commands("sem-fpn"), {"gpu": 90, "toy": 300},
          transfer_collect("sem_fpn", {}), "mmseg", ("data", "pretrain"), coco_env),
    Stage("upernet", mmseg_commands("upernet"), {"gpu": 90, "toy": 300},
          transfer_collect("upernet", {}), "mmseg", ("data", "pretrain"), coco_env),
    Stage("detectron2", detectron2_commands, {"gpu": 150, "toy": 300},
          transfer_collect("detectron2", {}), "detectron2", ("data", "pretrain")),
]


# ------------------------------------------------------------------------------------ running
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
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def run_command(argv: list[str], deadline: float, log: Path, env: dict) -> tuple[int | None, str]:
    """Run `python -m argv` in its own process group until `deadline` (time.monotonic()).
    Returns (exit code or None on timeout, the last lines of its output)."""
    with open(log, "a") as out:
        out.write(f"$ python -m {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the stage's workers too
            proc.wait()
            code = None
    tail = log.read_text(errors="replace").splitlines()[-15:]
    return code, "\n".join(tail)


def run_stage(stage: Stage, ctx: Context, done: dict[str, dict]) -> dict:
    missing = [n for n in stage.needs if done.get(n, {}).get("status") != PASSED]
    if missing:
        return {"status": SKIPPED, "why": f"needs the {', '.join(missing)} stage(s)"}
    if stage.requires and not importable(stage.requires):
        return {"status": SKIPPED, "why": f"{stage.requires} is not installed here"}
    log = ctx.path("logs", f"{stage.name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **stage.env(ctx)}
    if ctx.jobs > 1:  # stages side by side: one thread each, not two spinning on one core
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.monotonic()
    deadline = start + stage.deadline[ctx.mode]
    result: dict = {"deadline_seconds": stage.deadline[ctx.mode], "log": str(log),
                    "commands": []}
    try:
        commands = stage.commands(ctx)
    except KdclError as e:
        return {**result, "status": FAILED, "error": str(e)}
    for argv in commands:
        result["commands"].append("python -m " + " ".join(argv))
        code, tail = run_command(argv, deadline, log, env)
        if code != 0:
            result["status"] = TIMEOUT if code is None else FAILED
            result["error"] = (f"exceeded its {stage.deadline[ctx.mode]} s deadline"
                               if code is None else f"exit code {code}") + "\n" + tail
            break
    else:
        result["status"] = PASSED
    result["seconds"] = round(time.monotonic() - start, 1)
    try:
        result["measured"] = stage.collect(ctx)
    except (OSError, KeyError, ValueError, TypeError, ZeroDivisionError) as e:
        result["measured"] = {"error": f"could not read the stage's outputs: {e!r}"}
    result["fallbacks"] = fallbacks(log)
    return result


# Lines of a stage's log that say a setting fell back (SyncBN in one process, AMP on a CPU).
FALLBACK_WORDS = ("has no effect", "falls back", "falling back", "using BatchNorm",
                  "training in float32")


def fallbacks(log: Path) -> list[str]:
    if not log.is_file():
        return []
    lines = {line.strip()[-300:] for line in log.read_text(errors="replace").splitlines()
             if any(w in line for w in FALLBACK_WORDS)}
    return sorted(lines)[:10]


# -------------------------------------------------------------------------------------- report
def logs_archive(folder: Path) -> bytes:
    """The stages' logs as one .tar.gz (logs/<stage>.log)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for log in sorted(folder.glob("*.log")):
            tar.add(log, arcname=f"logs/{log.name}")
    return data.getvalue()


def environment(mode: str) -> dict:
    import torch

    from kdcl_common import provenance

    env = provenance.environment()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"mode": mode, "gpu": gpu, "cpu_cores": os.cpu_count(), "python": sys.version.split()[0],
            "optional": {m: importable(m) for m in ("pycocotools", "mmcv", "mmseg",
                                                     "detectron2")},
            **{k: env[k] for k in ("created", "host", "platform", "cuda", "devices",
                                   "versions", "git_commit", "git_dirty")}}


def _cell(result: dict) -> str:
    """The headline figures of a stage's measurements, for the Markdown table."""
    m = result.get("measured", {})
    parts = []
    for key, value in m.items():
        if isinstance(value, dict) and "images_per_second" in value:
            parts.append(f"{key}: {value['images_per_second']:.0f} img/s ({value['step_ms']} ms"
                         + (f", wait {value['data_wait_ms']} ms" if "data_wait_ms" in value
                            else "") + ")")
        elif isinstance(value, dict) and "channels_last_speedup" in value:
            parts.append(f"{key}: channels-last {value['channels_last_speedup']:.2f}x")
        elif key.startswith("end_to_end_over_compute"):
            parts.append(f"{key}: {value:.2f}")
        elif key in ("seconds_per_iteration", "images_per_second", "peak_memory_mb",
                     "data_wait_seconds", "top1") and value is not None:
            parts.append(f"{key}: {value}")
        elif key == "metrics":
            main = {k: v for k, v in value.items() if k in ("bbox_AP", "segm_AP", "mIoU", "AP",
                                                           "box_AP", "mask_AP", "aAcc")}
            parts.append(", ".join(f"{k} {v:.1f}" for k, v in main.items()))
    return "; ".join(p for p in parts if p) or result.get("why", "")


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Acceptance run ({env['mode']})", "",
             f"{env['gpu'] or 'no GPU'}; {env['cpu_cores']} CPU cores; Python {env['python']}; "
             f"torch {env['versions'].get('torch')}, torchvision "
             f"{env['versions'].get('torchvision')}; {env['created']}; git "
             f"{str(env['git_commit'])[:10]}{' (dirty)' if env['git_dirty'] else ''}.",
             "Installed: " + ", ".join(f"{k} {'yes' if v else 'no'}"
                                       for k, v in env["optional"].items()) + ".", "",
             f"Total {report.get('seconds', 0):.0f} s"
             + (f", {report['jobs']} stages at a time (their times are not measurements)"
                if report.get("jobs", 1) > 1 else "") + f". Command: `{report['command']}`", "",
             *(["Set-up before it (scripts/gpu_check.sh), seconds: " + ", ".join(
                 f"{k} {v}" for k, v in report["setup_seconds"].items()), ""]
               if report.get("setup_seconds") else []),
             "| stage | status | seconds | measured |", "|---|---|---|---|"]
    for name, r in report["stages"].items():
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', '')} | "
                     f"{_cell(r).replace('|', '/')} |")
    lines.append("")
    for name, r in report["stages"].items():
        if r.get("fallbacks"):
            lines.append(f"- {name} fell back: " + "; ".join(r["fallbacks"]))
        if r.get("error"):
            lines += [f"- {name} {r['status']}:", "", "```", r["error"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chain.acceptance",
                                     description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("auto", *MODES), default="auto",
                        help="gpu: full size on the GPU; toy: tiny, on the CPU; auto: gpu if "
                        "CUDA is available")
    parser.add_argument("--work", default="runs/acceptance/work",
                        help="generated data, run folders, logs (replaced on every call)")
    parser.add_argument("--report", default="runs/acceptance",
                        help="folder of report.json and report.md")
    parser.add_argument("--jobs", type=int,
                        help="stages run at once (default: 1 on the GPU, so that each stage's "
                        "times are its own; 2 in toy mode, whose times mean nothing)")
    parser.add_argument("--setup", help="a JSON of set-up steps and their seconds, for the report "
                        "(written by scripts/gpu_check.sh)")
    parser.add_argument("--only", nargs="+", metavar="STAGE",
                        help=f"these stages (and what they need): {', '.join(s.name for s in STAGES)}")
    args = parser.parse_args(argv)
    import torch

    mode = args.mode if args.mode != "auto" else ("gpu" if torch.cuda.is_available() else "toy")
    if mode == "gpu" and not torch.cuda.is_available():
        print("error: --mode gpu needs a GPU that torch can see (torch.cuda.is_available() is "
              "False); use --mode toy", file=sys.stderr)
        return 2
    names = [s.name for s in STAGES]
    unknown = [n for n in args.only or [] if n not in names]
    if unknown:
        print(f"error: --only {' '.join(unknown)}: no such stage; stages: {', '.join(names)}",
              file=sys.stderr)
        return 2
    wanted = set(args.only or names)
    for stage in STAGES:  # a stage brings what it needs
        if stage.name in wanted:
            wanted.update(stage.needs)
    jobs = args.jobs or (1 if mode == "gpu" else 2)
    ctx = Context(mode, Path(args.work).resolve(), jobs)
    marker = ctx.path(WORK_MARKER)
    if ctx.work.exists() and any(ctx.work.iterdir()):
        if not marker.is_file():
            print(f"error: --work {ctx.work} is not empty and was not made by this command (no "
                  f"{WORK_MARKER}); it is replaced on every call: name a new folder",
                  file=sys.stderr)
            return 2
        shutil.rmtree(ctx.work)  # a new acceptance run: no stale runs, records or data
    ctx.work.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by python -m chain.acceptance, which replaces this folder\n")
    report_dir = Path(args.report)
    report = {"command": "python -m chain.acceptance " + " ".join(sys.argv[1:] if argv is None
                                                                  else argv),
              "environment": environment(mode), "stages": {}}
    if args.setup and Path(args.setup).is_file():
        report["setup_seconds"] = json.loads(Path(args.setup).read_text())
    start = time.monotonic()
    report["jobs"] = jobs
    results: dict[str, dict] = {}

    def finished(stage: Stage, result: dict) -> None:
        results[stage.name] = result
        report["stages"] = {s.name: results[s.name] for s in STAGES if s.name in results}
        report["seconds"] = round(time.monotonic() - start, 1)
        atomic_write_json(report_dir / "report.json", report)
        atomic_write_text(report_dir / "report.md", markdown(report))
        atomic_write_bytes(report_dir / "logs.tar.gz", logs_archive(ctx.path("logs")))
        print(f"[acceptance] {stage.name}: {result['status']}"
              + (f" in {result['seconds']} s" if "seconds" in result else "")
              + (f" ({result['why']})" if "why" in result else ""), flush=True)

    # Stages start in STAGES' order once the stages they need have ended; with jobs > 1 (toy
    # mode: its times are not measurements) several run at once.
    pending = [s for s in STAGES if s.name in wanted]
    running: dict[Future, Stage] = {}
    with ThreadPoolExecutor(jobs) as pool:
        while pending or running:
            for stage in [s for s in pending if all(n in results for n in s.needs)]:
                if len(running) == jobs:
                    break
                pending.remove(stage)
                print(f"[acceptance] {stage.name} ...", flush=True)
                running[pool.submit(run_stage, stage, ctx, dict(results))] = stage
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                finished(running.pop(future), future.result())
    print(markdown(report))
    print(f"[acceptance] wrote {report_dir / 'report.json'}, report.md and logs.tar.gz")
    failed = [n for n, r in report["stages"].items() if r["status"] in (FAILED, TIMEOUT)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
