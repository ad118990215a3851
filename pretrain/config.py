"""The pre-training config schema: every key a YAML file or a `key=value` override may set.

`python -m pretrain --help` prints this schema with defaults and help texts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from kdcl_common import ConfigError, models
from kdcl_common import schedule
from kdcl_common.checkpoint import RunCheckpoints
from kdcl_common.runs import Policy
from kdcl_common.config import check_choice, load_named, option, schema_defaults
from kdcl_common.images import MAX_PIXELS, check_limit
from kdcl_common.schedule import OptimConfig

from . import registry

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
DATASETS = ("imagefolder", "cifar100", "synthetic")
POLICIES = ("imagenet", "cifar")
CIFAR_CUTOUT_SIZE = 8  # DeVries & Taylor's hole on CIFAR-100 (16 on CIFAR-10)


@dataclass
class StudentConfig:
    arch: str = option(help=f"architecture: {', '.join(models.ARCHITECTURES)}")
    kwargs: Dict[str, Any] = option({}, help="constructor arguments, e.g. {width_mult: 0.5}")
    name: Optional[str] = option(None, help="name in logs and exports (default: from arch)")
    channels_last: Optional[bool] = option(None, help="this student's memory format, where "
                                           "networks differ in which is faster (null: "
                                           "train.channels_last)")


@dataclass
class SyntheticConfig:
    classes: int = option(10, help="number of classes")
    train_per_class: int = option(120, help="training images per class")
    val_per_class: int = option(30, help="validation images per class")
    image_size: int = option(64, help="side of the generated JPEGs")
    seed: int = option(0, help="generator seed (the data is a pure function of these keys)")


@dataclass
class DataConfig:
    dataset: str = option("imagefolder", help=f"one of {', '.join(DATASETS)}; 'synthetic' "
                          "writes a generated ImageNet-layout set to data.root if it is missing")
    root: str = option(help="dataset folder: train/ and val/ (imagefolder, synthetic) or the "
                       "CIFAR-100 python folder")
    policy: str = option("imagenet", help="augmentation policy: imagenet (random-resized crop, "
                         "flip, colour jitter) or cifar (pad-4 crop, flip)")
    image_size: int = option(224, help="training and evaluation crop size")
    eval_resize: int = option(256, help="shorter side before the centre crop (imagenet policy)")
    crop_scale: List[float] = option([0.08, 1.0], help="random-resized-crop area range")
    color_jitter: float = option(0.4, help="brightness/contrast/saturation jitter (0 = off)")
    cutout: bool = option(False, help="Cutout (DeVries & Taylor 2017): one square hole per "
                          "training view, zero after normalisation (the mean colour), centre "
                          "uniform over the crop, clipped at its borders")
    cutout_size: Optional[int] = option(None, help="side of the Cutout hole in pixels; null: 8 "
                                        "with the cifar policy (DeVries & Taylor's CIFAR-100 "
                                        "size), required with the imagenet policy")
    held_out_per_class: int = option(20, help="training images per class held out for "
                                     "KDCL-General's weights (excluded from training, all methods)")
    split_seed: int = option(0, help="seed of the held-out split")
    workers: int = option(8, help="data-loading processes per rank")
    decode: str = option("cpu", help="where training JPEGs are decoded and cropped: cpu (the "
                         "loader workers) or device (nvjpeg on the GPU, the whole batch at once; "
                         "the workers only read files: for ImageNet-size images when the CPUs "
                         "cannot keep up)")
    max_corrupt_fraction: float = option(0.001, help="undecodable images are skipped with a "
                                         "warning; stop when more than this fraction of the "
                                         "dataset is undecodable")
    max_image_pixels: int = option(MAX_PIXELS, help="an image whose header gives more pixels "
                                   "is skipped without decoding it, and counted as undecodable "
                                   "(a small PNG can hold 30000x30000 pixels: 2.7 GB decoded); "
                                   "the default is PIL's warning threshold")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class SharedMethodConfig:
    """The method keys every method reads; each method's own keys are its registry entry's
    options (pretrain/registry.py), added by `method_schema`."""
    name: str = option("kdcl_minlogit", help="the method (pretrain/registry.py)")
    temperature: float = option(2.0, help="T of the soft targets (and the T^2 factor)")
    kd_weight: float = option(1.0, help="lambda, the weight of the distillation term")
    ce_weight: float = option(1.0, help="the weight of the hard-label cross-entropy (clnn: "
                              "beta, with kd_weight = 1 - beta)")
    icl: bool = option(True, help="invariant collaborative learning: each student gets its own "
                       "random view of every image (false: all students see the same view)")


def method_schema() -> type:
    """The `method:` section's schema: the shared keys, then one field per option that the
    registry's entries declare, its help prefixed with the methods that read it. Flat keys
    (method.teacher, method.splits), so that configs and saved run identities keep their form."""
    names = f"one of {', '.join(registry.NAMES)}"
    fields = [("name", str, option(SharedMethodConfig.name, help=names))]
    for key, (opt, users) in registry.options().items():
        fields.append((key, opt.type, option(opt.default, help=f"{', '.join(users)}: {opt.help}")))
    return make_dataclass("MethodConfig", fields, bases=(SharedMethodConfig,),
                          namespace={"__module__": __name__})


MethodConfig = method_schema()  # of the registry as imported; `schema()` follows it


@dataclass
class TrainConfig:
    device: str = option("auto", help="auto (GPU if present), cpu or cuda")
    amp: str = option("off", help="mixed precision on GPU: off, bf16 or fp16 (with a scaler)")
    channels_last: bool = option(False, help="channels-last memory format of the inputs and "
                                 "the students (faster on GPUs; students.N.channels_last "
                                 "overrides it per student)")
    sync_bn: bool = option(False, help="SyncBatchNorm across ranks (GPU, several processes; "
                           "falls back to BatchNorm with a warning elsewhere)")
    deterministic: bool = option(False, help="deterministic algorithms (bit-reproducible on CPU)")
    compile: bool = option(False, help="torch.compile the students' training forward and "
                           "backward (minutes of compilation first; pays off on long GPU runs)")
    fused_optimizer: bool = option(True, help="the fused SGD kernel where the device has one "
                                   "(CUDA, CPU), else the foreach one: one kernel for all "
                                   "parameters instead of one per tensor")
    log_interval: int = option(50, help="steps between training-metric logs (and NaN checks)")


@dataclass
class PretrainConfig:
    name: Optional[str] = option(None, help="run name (default: the config's path under "
                                 "pretrain/configs without .yaml)")
    preset: str = option("custom", help="smoke, cifar, paper or custom (recorded in results)")
    seed: int = option(0, help="seed of initialisation, data order and augmentation")
    output_root: str = option("runs/pretrain", help="runs go to <output_root>/<name>/seed<seed>")
    records: str = option("results/records", help="the records folder: the run's records go "
                         "to <records>/pretrain/<name>/seed<seed>.json (a location, not "
                         "part of the run's identity)")
    students: List[StudentConfig] = option([], help="the students trained together")
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root) / str(self.name) / f"seed{self.seed}"


def schema() -> type:
    """The config schema for the registry as it is now: PretrainConfig, or, for a method
    registered after this module was imported (a plug-in's, a test's), a PretrainConfig whose
    `method` section has that method's options too."""
    if registry.METHODS is _IMPORTED_METHODS:
        return PretrainConfig
    method = method_schema()
    return make_dataclass("PretrainConfig", [("method", method, field(default_factory=method))],
                          bases=(PretrainConfig,), namespace={"__module__": __name__})


_IMPORTED_METHODS = registry.METHODS  # what MethodConfig was made from
CHECKPOINTS = RunCheckpoints(format="kdcl-bench/pretrain-checkpoint-v1")
LOCATIONS = ("output_root", "records", "data.root")
RUNS = Policy(
    finished_marker="export/manifest.json", has_checkpoint=CHECKPOINTS.exists,
    # may change on --resume: how the run is executed, not what it computes
    resumable_keys=("data.workers", "data.decode", "train.log_interval", "train.compile",
                    "train.fused_optimizer"),
    # where things are, not what the run is (the data is identified by its fingerprint)
    location_keys=LOCATIONS,
    # may change on the --resume after a stop for a non-finite loss
    recovery_keys=("optim.lr", "optim.warmup_epochs", "optim.warmup_start_lr", "train.amp"),
    # keys added since a run was saved (method.splits, data.cutout, ...) at their defaults
    defaults=schema_defaults(PretrainConfig))


def load(path: str | Path, overrides: list[str] = ()) -> PretrainConfig:
    cfg = load_named(schema(), path, overrides, CONFIG_ROOT)
    validate(cfg)
    return cfg


def validate(cfg: PretrainConfig) -> None:
    """Checks that the schema's types cannot express: choices, ranges, method requirements and
    the students' constructor arguments (each student is built on the meta device, which
    allocates nothing)."""
    check_choice("method.name", cfg.method.name, registry.NAMES)
    check_choice("data.dataset", cfg.data.dataset, DATASETS)
    check_choice("data.policy", cfg.data.policy, POLICIES)
    check_choice("data.decode", cfg.data.decode, ("cpu", "device"))
    check_choice("train.amp", cfg.train.amp, ("off", "bf16", "fp16"))
    if not cfg.students:
        raise ConfigError("no students: list at least one under `students:` "
                          "(e.g. - {arch: resnet18})")
    for i, student in enumerate(cfg.students):
        if student.arch not in models.ARCHITECTURES:
            raise ConfigError(f"students.{i}.arch: unknown architecture {student.arch!r}; known "
                              f"architectures: {', '.join(models.ARCHITECTURES)}")
    check_method(cfg)
    if cfg.method.temperature <= 0:
        raise ConfigError(f"method.temperature must be > 0, got {cfg.method.temperature}")
    for problem in schedule.check(cfg.optim):
        raise ConfigError(problem)
    if (len(cfg.data.crop_scale) != 2
            or not 0 < cfg.data.crop_scale[0] <= cfg.data.crop_scale[1] <= 1):
        raise ConfigError(f"data.crop_scale must be [low, high] within (0, 1], "
                          f"got {cfg.data.crop_scale}")

    def need(key: str, value: Any, ok: bool, rule: str) -> None:
        # `ok` is written so that NaN fails it
        if not ok:
            raise ConfigError(f"{key}={value!r} must be {rule}")

    need("seed", cfg.seed, cfg.seed >= 0, ">= 0 (the run folder is seed<n>, and every random "
         "draw derives from it)")
    for i, student in enumerate(cfg.students):
        if student.name is not None and (not student.name.strip() or "/" in student.name
                                         or student.name in (".", "..")):
            raise ConfigError(f"students.{i}.name={student.name!r} must be a plain file name "
                              f"(the export is export/<name>.pth), e.g. resnet18_a")
    data = cfg.data
    need("data.workers", data.workers, data.workers >= 0,
         ">= 0 (0: load in the training process)")
    need("data.image_size", data.image_size, data.image_size > 0, "> 0 (pixels)")
    if data.policy == "imagenet":
        need("data.eval_resize", data.eval_resize, data.eval_resize >= data.image_size,
             f">= data.image_size={data.image_size} (the centre crop is taken from the image "
             f"resized to it)")
    need("data.held_out_per_class", data.held_out_per_class, data.held_out_per_class >= 0,
         ">= 0 (0: none held out)")
    need("data.max_corrupt_fraction", data.max_corrupt_fraction,
         0 <= data.max_corrupt_fraction < 1, "in [0, 1) (0: stop at the first undecodable image)")
    if (problem := check_limit(data.max_image_pixels, "data.max_image_pixels")):
        raise ConfigError(problem)
    need("data.color_jitter", data.color_jitter,
         data.color_jitter >= 0 and math.isfinite(data.color_jitter), ">= 0 (0: off)")
    if data.cutout:
        if data.cutout_size is None and data.policy == "cifar":
            # Resolved here, so that run.json, the export and --print-config show the side used.
            data.cutout_size = CIFAR_CUTOUT_SIZE
        if data.cutout_size is None:
            raise ConfigError(f"data.cutout_size: the {data.policy} policy has no default hole "
                              f"size (DeVries & Taylor give sizes for CIFAR only): set one, e.g. "
                              f"data.cutout_size={max(1, data.image_size // 4)}")
        need("data.cutout_size", data.cutout_size, 0 < data.cutout_size <= data.image_size,
             f"in [1, data.image_size={data.image_size}] (pixels)")
    elif data.cutout_size is not None:
        raise ConfigError(f"data.cutout_size={data.cutout_size} has no effect without Cutout: "
                          f"set data.cutout=true, or remove data.cutout_size")
    if data.dataset == "synthetic":
        for name in ("classes", "train_per_class", "val_per_class", "image_size"):
            value = getattr(data.synthetic, name)
            need(f"data.synthetic.{name}", value, value > 0, "> 0")
    need("method.kd_weight", cfg.method.kd_weight,
         cfg.method.kd_weight >= 0 and math.isfinite(cfg.method.kd_weight),
         ">= 0 (0: no distillation term)")
    need("method.ce_weight", cfg.method.ce_weight,
         cfg.method.ce_weight >= 0 and math.isfinite(cfg.method.ce_weight), ">= 0")
    need("train.log_interval", cfg.train.log_interval, cfg.train.log_interval > 0,
         "> 0 (training steps)")

    # A typo in students.N.kwargs would otherwise pass --print-config and stop the run only
    # when it builds the students.
    num_classes = {"cifar100": 100, "synthetic": data.synthetic.classes}.get(data.dataset, 10)
    for i, student in enumerate(cfg.students):
        key = f"students.{i}.kwargs"
        if "num_classes" in student.kwargs:
            raise ConfigError(f"{key}.num_classes: the number of classes comes from the "
                              f"dataset; remove num_classes from {key}")
        try:
            models.check_arguments(student.arch, student.kwargs, num_classes)
        except ConfigError as e:
            raise ConfigError(f"{key}{e}") from None


def check_method(cfg: PretrainConfig) -> None:
    """What the method's registry entry says it needs, its options (and nobody else's), then
    the method's own check (which may resolve its defaults, e.g. ONE's and CLNN's splits)."""
    name, method = cfg.method.name, cfg.method
    entry = registry.get(name)
    if len(cfg.students) < entry.min_students:
        raise ConfigError(f"method {name} trains students together: list at least "
                          f"{entry.min_students}")
    if entry.max_students is not None and len(cfg.students) > entry.max_students:
        why = ("builds its branches from one backbone" if entry.multi_branch else
               f"trains at most {entry.max_students} student(s)")
        raise ConfigError(f"method {name} {why}: list {entry.max_students} under students "
                          f"(e.g. students=[{{arch: resnet18}}]), not {len(cfg.students)}")
    for key, (opt, users) in registry.options().items():
        value = getattr(method, key)
        if opt not in entry.options:
            if value != opt.default:
                who = f"method {users[0]}" if len(users) == 1 else f"methods {', '.join(users)}"
                raise ConfigError(f"method.{key} is only used by {who}, not {name}: remove it")
        elif opt.required and value in (opt.default, ""):
            raise ConfigError(f"method {name} needs method.{key}=<value>: {opt.help}")
        elif opt.choices:
            check_choice(f"method.{key}", value, opt.choices)
    if entry.needs_held_out and cfg.data.held_out_per_class <= 0:
        raise ConfigError(f"{name} estimates its weights on held-out images: "
                          f"set data.held_out_per_class > 0")
    if method.icl and not entry.icl:
        why = ("trains one multi-branch network on one view of every image (its branches are "
               "its students, and they share their lower layers, so they cannot see different "
               "views)" if entry.multi_branch else "does not use one view per student")
        raise ConfigError(f"method.icl=true: {name} {why}; set method.icl=false")
    from .methods import method_class  # torch; the registry's facts above are checked first

    method_class(name).check_config(cfg)
