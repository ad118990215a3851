"""The mmsegmentation backend: `python -m transfer <mmseg .py config> --backbone PATH`.

The config is mmseg's own Python config (mmengine's Config, `_base_` inheritance, `mmseg::`
bases). Per run: check that the backbone's architecture fits the config; set the backbone's
width, the heads' input channels and the input normalisation from its metadata; check the
dataset (folders, image/label pairs; label values and sizes as images load); convert the
weights to mmseg's names, checked key by key against the backbone mmseg builds, and load them
through the backbone's init_cfg; train with mmengine's Runner (torchrun -> launcher 'pytorch';
checkpoints written atomically); evaluate with mmseg's IoUMetric; append one result record.
"""
from __future__ import annotations

import difflib
import json
import os
import time
import warnings
from pathlib import Path

from kdcl_common import ConfigError, DataError, KdclError, artifact, models, records
from kdcl_common import distributed as kdist
from kdcl_common.config import config_diff, parse_overrides
from kdcl_common.io import atomic_torch_save, atomic_write_json, atomic_write_text

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
RESUMABLE = ("train_dataloader.num_workers", "val_dataloader.num_workers",
             "test_dataloader.num_workers", "default_hooks.logger.interval")


def require_mmseg() -> None:
    try:
        import mmcv.ops  # noqa: F401  (mmseg needs mmcv's compiled ops)
        import mmseg  # noqa: F401
    except ImportError as e:
        raise KdclError(f"mmsegmentation cannot be imported ({e}). It needs mmcv 2.1.0 compiled "
                        f"with its ops: run `bash scripts/setup.sh` (or see README, Set-up)") from None


# ------------------------------------------------------------------------------------ config
def load(path: str | Path, overrides: list[str]):
    """mmseg's config at `path`, with `key=value` overrides that must name existing keys."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = Config.fromfile(str(path))
    except Exception as e:  # noqa: BLE001 - mmengine raises many types for a bad config
        raise ConfigError(f"{path}: {type(e).__name__}: {e}") from None
    for key, value in parse_overrides(list(overrides)):
        _check_key(cfg.to_dict(), key)
        cfg.merge_from_dict({key: value}, allow_list_keys=True)
    return cfg


def _check_key(tree: dict, dotted: str) -> None:
    node, walked = tree, []
    for part in dotted.split("."):
        if isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"'{'.'.join(walked)}' is a list of {len(node)}: index it with "
                                  f"0..{len(node) - 1}")
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                near = difflib.get_close_matches(part, list(node), n=1, cutoff=0.5)
                hint = f" Did you mean '{'.'.join([*walked, near[0]])}'?" if near else ""
                raise ConfigError(f"unknown config key '{'.'.join([*walked, part])}'.{hint} "
                                  f"Valid keys here: {', '.join(sorted(map(str, node)))}")
            node = node[part]
        else:
            return
        walked.append(part)


def name_of(path: str | Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(CONFIG_ROOT).with_suffix(""))
    except ValueError:
        return path.stem


def backbone_channels(arch: str, kwargs: dict) -> list[int]:
    """Output channels of the four stages mmseg's backbone returns."""
    if arch in ("resnet18", "resnet34"):
        return [64, 128, 256, 512]
    if arch in ("resnet50", "resnet101"):
        return [256, 512, 1024, 2048]
    from mmseg.models.utils import make_divisible

    width = float(kwargs.get("width_mult", 1.0))
    return [make_divisible(c * width, 8) for c in (24, 32, 96, 320)]


def fit_backbone(cfg, meta: dict, path: Path) -> list[int]:
    """Check the architecture against the config; take width, channels and the input
    normalisation from the metadata. Returns the backbone's stage channels."""
    arch, kwargs = meta["architecture"], meta["constructor_kwargs"]
    backbone = cfg.model.backbone
    if backbone.type == "ResNet":
        wanted = f"resnet{backbone.depth}"
        if arch != wanted:
            raise ConfigError(f"{path} is a {arch} backbone, but the config builds a {wanted}: "
                              f"use a config for {arch}")
        if backbone.get("style") != "pytorch" or backbone.get("deep_stem", False):
            raise ConfigError("torchvision ResNets need mmseg's ResNet(style='pytorch') without "
                              "a deep stem")
    elif backbone.type == "MobileNetV2":
        if arch != "mobilenet_v2":
            raise ConfigError(f"{path} is a {arch} backbone, but the config builds a MobileNetV2")
        backbone.widen_factor = float(kwargs.get("width_mult", 1.0))
    else:
        raise ConfigError(f"model.backbone.type {backbone.type} is not one this project converts "
                          f"weights for (ResNet, MobileNetV2)")
    channels = backbone_channels(arch, kwargs)
    model = cfg.model
    if model.get("neck") and model.neck.type == "FPN":
        model.neck.in_channels = channels
    elif model.decode_head.type == "UPerHead":
        model.decode_head.in_channels = channels
    aux = model.get("auxiliary_head")
    if aux:
        for head in aux if isinstance(aux, list) else [aux]:
            head.in_channels = channels[head.in_index]
    pre = meta["preprocessing"]
    model.data_preprocessor.mean = list(pre["mean_255"])
    model.data_preprocessor.std = list(pre["std_255"])
    model.data_preprocessor.bgr_to_rgb = pre.get("color", "RGB") == "RGB"  # mmcv loads BGR
    return channels


def dataset_classes(cfg) -> tuple:
    from mmseg.registry import DATASETS

    dataset = cfg.train_dataloader.dataset
    metainfo = dataset.get("metainfo") or {}
    if metainfo.get("classes"):
        return tuple(metainfo["classes"])
    return tuple(DATASETS.get(dataset.type).METAINFO["classes"])


def set_classes(cfg, num_classes: int) -> None:
    cfg.model.decode_head.num_classes = num_classes
    aux = cfg.model.get("auxiliary_head")
    for head in (aux if isinstance(aux, list) else [aux]) if aux else []:
        head.num_classes = num_classes
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        pipeline = cfg[loader].dataset.pipeline
        if any(t["type"] == "CheckSegLabels" for t in pipeline):
            continue
        position = next(i for i, t in enumerate(pipeline) if t["type"] == "LoadAnnotations")
        pipeline.insert(position + 1, dict(type="CheckSegLabels", num_classes=num_classes))


def check_layout(cfg) -> None:
    """Folders exist and every image has its label map (and the reverse)."""
    for loader in ("train_dataloader", "val_dataloader"):
        dataset = cfg[loader].dataset
        root = Path(dataset.data_root)
        images = root / dataset.data_prefix.img_path
        labels = root / dataset.data_prefix.seg_map_path
        for folder in (images, labels):
            if not folder.is_dir():
                raise DataError(f"{folder} does not exist. The COCO-Stuff 164k layout is "
                                f"images/{{train,val}}2017/*.jpg and "
                                f"annotations/{{train,val}}2017/*_labelTrainIds.png under the data "
                                f"root ($COCO_STUFF_ROOT, or override train_dataloader.dataset."
                                f"data_root and val_dataloader.dataset.data_root)")
        img_suffix = dataset.get("img_suffix", ".jpg")
        seg_suffix = dataset.get("seg_map_suffix", "_labelTrainIds.png")
        image_stems = {f[:-len(img_suffix)] for f in os.listdir(images) if f.endswith(img_suffix)}
        label_stems = {f[:-len(seg_suffix)] for f in os.listdir(labels) if f.endswith(seg_suffix)}
        if not image_stems:
            raise DataError(f"{images} holds no *{img_suffix} images")
        unlabelled, orphans = sorted(image_stems - label_stems), sorted(label_stems - image_stems)
        if unlabelled or orphans:
            raise DataError(f"images and label maps do not pair up in {root}: "
                            f"{len(unlabelled)} images without a label (e.g. "
                            f"{[s + img_suffix for s in unlabelled[:3]]}), {len(orphans)} labels "
                            f"without an image (e.g. {[s + seg_suffix for s in orphans[:3]]})")


def fall_back_from_syncbn(cfg, world_size: int, cuda: bool) -> None:
    if world_size > 1 and cuda:
        return
    changed = []

    def visit(node, where):
        if isinstance(node, dict):
            if node.get("type") == "SyncBN":
                node["type"] = "BN"
                changed.append(where)
            for key, value in node.items():
                visit(value, f"{where}.{key}")
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                visit(value, f"{where}.{i}")

    visit(cfg.model, "model")
    if changed:
        where = "on the CPU" if not cuda else "in a single process"
        warnings.warn(f"SyncBN has no effect {where}: using BN ({len(changed)} norm configs)",
                      stacklevel=2)


# ------------------------------------------------------------------------------- run folders
def last_checkpoint(work_dir: Path) -> Path | None:
    """The newest whole checkpoint; repairs a `last_checkpoint` pointer that a kill left
    missing or pointing at a file that is not there (checkpoints themselves are atomic)."""
    pointer = work_dir / "last_checkpoint"
    if pointer.is_file():
        target = Path(pointer.read_text().strip())
        if target.is_file():
            return target
    candidates = sorted(work_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    if not candidates:
        return None
    atomic_write_text(pointer, str(candidates[-1]))
    return candidates[-1]


def run_action(work_dir: Path, resume: bool, config: dict) -> str:
    finished = (work_dir / "result.json").is_file()
    started = last_checkpoint(work_dir) is not None
    if (finished or started) and not resume:
        what = "a finished run" if finished else "the checkpoints of an unfinished run"
        raise KdclError(f"{work_dir} holds {what}: pass --resume to continue it (a no-op when "
                        f"finished), or change randomness.seed or the config")
    saved = work_dir / "kdcl_config.json"
    if (finished or started) and saved.is_file():
        diff = config_diff(json.loads(saved.read_text()), config, ignore=RESUMABLE)
        if diff:
            raise ConfigError(f"refusing to resume {work_dir}: its config differs from this "
                              f"one\n" + "\n".join(diff))
    return "finished" if finished else "resume" if started else "start"


# ------------------------------------------------------------------------------------- main
def main(args) -> int:
    require_mmseg()
    import torch
    from mmengine.runner import Runner

    from ... import convert
    from ...coco import synthetic
    from ..torchvision.engine import backbone_id
    from . import extensions

    cfg = load(args.config, args.overrides)
    if args.print_config:
        print(cfg.pretty_text)
        return 0
    backbone = Path(args.backbone).with_suffix(".pth")
    if not backbone.is_file():
        raise KdclError(f"backbone weights not found: {backbone}")
    meta = artifact.read_metadata(backbone)
    fit_backbone(cfg, meta, backbone)
    kdcl = cfg.get("kdcl", {})
    if kdcl.get("synthetic"):
        for loader in ("train_dataloader", "val_dataloader"):
            synthetic.generate(cfg[loader].dataset.data_root)  # safe in every rank at once
    check_layout(cfg)
    classes = dataset_classes(cfg)
    set_classes(cfg, len(classes))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    fall_back_from_syncbn(cfg, world, cuda)
    name = name_of(args.config)
    seed = cfg.get("randomness", {}).get("seed", 0)
    work_dir = (Path(kdcl.get("output_root", "runs/transfer")) / name / backbone_id(meta, backbone)
                / f"seed{seed}")
    cfg.work_dir = str(work_dir)
    config = json.loads(json.dumps(cfg.to_dict(), default=str))  # as kdcl_config.json holds it
    action = run_action(work_dir, args.resume or args.eval_only, config)
    if action == "finished" and not args.eval_only:
        print(f"{work_dir} is already finished: {work_dir / 'result.json'}")
        return 0

    # Converted weights, checked against the backbone mmseg builds; each rank writes the same
    # bytes atomically, so no rank can read a partial file.
    from mmseg.registry import MODELS

    target = MODELS.build(cfg.model.backbone).state_dict()
    source, _ = artifact.load(backbone)
    converted = convert.convert(source.state_dict(), meta["architecture"], "mmseg", target.keys())
    convert.check_shapes(converted, target, f"mmseg's {cfg.model.backbone.type}")
    weights = work_dir / "backbone.pth"
    atomic_torch_save(converted.state, weights)
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(weights))

    cfg.launcher = "pytorch" if world > 1 else "none"
    if world > 1:
        # mmengine's 'pytorch' launcher assumes GPUs (it calls torch.cuda.set_device); the
        # Runner skips its own set-up when a process group exists, so make it here: NCCL on
        # GPUs, gloo on CPUs, where DDP also needs device_ids=None.
        kdist.init("cuda" if cuda else "cpu")
        if not cuda:
            cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None,
                                         broadcast_buffers=False)
    cfg.custom_hooks = [*cfg.get("custom_hooks", []), dict(type="KdclMetricsHook"),
                        dict(type="PlainCheckpointHook")]
    extensions.use_atomic_local_writes()
    if rank == 0:
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(work_dir / "kdcl_config.json", config)
    if args.eval_only:
        checkpoint = last_checkpoint(work_dir)
        if checkpoint is None:
            raise KdclError(f"--eval-only evaluates a trained run, but {work_dir} has no "
                            f"checkpoint: train it first")
        cfg.load_from, cfg.resume = str(checkpoint), False
        metrics = Runner.from_cfg(cfg).val()
        if rank == 0:
            atomic_write_json(work_dir / "eval-val.json",
                              {"checkpoint": str(checkpoint),
                               "metrics": {k: float(v) for k, v in metrics.items()}})
        return 0
    cfg.resume, cfg.load_from = action == "resume", None
    start = time.time()
    runner = Runner.from_cfg(cfg)
    runner.train()
    if rank == 0:
        hook = next(h for h in runner.hooks if isinstance(h, extensions.KdclMetricsHook))
        write_record(cfg, args, meta, backbone, hook.metrics, world, time.time() - start,
                     name, classes)
    return 0


def write_record(cfg, args, meta: dict, backbone: Path, metrics: dict, world: int,
                 seconds: float, name: str, classes: tuple) -> None:
    kdcl = cfg.get("kdcl", {})
    batch = cfg.train_dataloader.batch_size * world
    iterations = cfg.train_cfg.max_iters
    record = records.append(
        kdcl.get("records", "results/records/transfer.jsonl"), stage="transfer",
        task="semantic_segmentation",
        dataset="synthetic" if kdcl.get("synthetic") else "coco_stuff164k", backend="mmseg",
        backbone=models.label(meta["architecture"], meta["constructor_kwargs"]),
        method=meta.get("method", "unknown"),
        metrics={k: (None if metrics.get(k) is None else round(float(metrics[k]), 3))
                 for k in ("mIoU", "mAcc", "aAcc")}, seed=cfg.randomness.seed,
        preset=kdcl.get("preset", "custom"), config=name, config_file=args.config,
        config_hash=_hash(json.dumps(cfg.to_dict(), sort_keys=True, default=str)),
        run_dir=cfg.work_dir, world_size=world, wall_seconds=seconds,
        protocol=kdcl.get("protocol", ""), head=cfg.model.decode_head.type,
        iterations=iterations, images_per_batch=batch, classes=len(classes),
        backbone_path=str(backbone), backbone_sha256=meta.get("sha256"),
        pretrain_config=meta.get("config_name"), pretrain_seed=meta.get("seed"),
        pretrain_run=meta.get("run_dir"), icl=meta.get("icl"),
        group="+".join(meta.get("students", [])),
        images_per_second=round(iterations * batch / seconds, 2))
    atomic_write_json(Path(cfg.work_dir) / "result.json", record)
    print("result: " + json.dumps(record["metrics"]))


def _hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]
