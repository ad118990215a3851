"""What a transfer backend implements. transfer/lifecycle.py does everything that is the same
for every backend (the backbone, the run folder and its identity, --resume and --restart, the
result record); a backend drives its framework through these steps. Each takes what it needs
and returns what it makes (a backend keeps no state between them but its command-line options):

    load_config(path, overrides) -> cfg  read its own config format (key=value overrides)
    fit_backbone(cfg, meta, path) -> cfg check the backbone's architecture against the config;
                                         take its width and input normalisation from its metadata
    spec(cfg, path) -> Spec              what the lifecycle needs to know about the config
    prepare(cfg, run) -> Prepared        everything that can fail before training, writing
                                         nothing: data present and well-formed, the model built,
                                         the weights converted and checked
    train(prepared, run)                 after the run folder is written: train, evaluate, and
                                         call run.finish(...) on the main process
    evaluate(prepared, run)              evaluate the run's last checkpoint:
                                         run.finish_evaluation(...)
    has_checkpoint(run_dir)              whether an unfinished run left something to resume
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from kdcl_common import ConfigError

from ..convert import DETECTION_ARCHS


@dataclass(frozen=True)
class Spec:
    """A loaded, fitted config as the lifecycle sees it."""

    name: str                 # the first level of the run folder (transfer/naming.py)
    seed: int
    output_root: str
    records: str              # the folder of result records (one file per run under it)
    preset: str               # smoke, paper or custom
    protocol: str             # the fine-tuning protocol, e.g. paper14ep_syncbn
    task: str                 # detection | instance_segmentation | semantic_segmentation
    dataset: str
    config: dict              # the resolved config as plain data: the run's identity
    config_text: str          # the config as the backend prints it (--print-config)
    config_file: str          # the name that text gets in the run folder
    device: str = "auto"      # auto, cpu or cuda: the device torchrun's processes use
    resumable_keys: tuple[str, ...] = ()   # may change on --resume
    recovery_keys: tuple[str, ...] = ()    # ... and on the --resume after a non-finite stop
    evaluation_keys: tuple[str, ...] = ()  # may change for --eval-only ('key.*': everything below)
    other_run: str = "seed=<n>"            # how to make a separate run of the same config
    evaluation_split: str = "val"          # names eval-<split>.json
    temporaries: tuple[str, ...] = ()      # the framework's own partial files (globs)
    extra: dict | None = None              # backend fields for the result record
    location_keys: tuple[str, ...] = ()    # where outputs go and data is read: not identity
    data: tuple[str, tuple[str, ...]] | None = None  # (root, files under it) that identify the
                                                     # data; None: the config does (generated)


@dataclass
class Prepared:
    """What prepare() made for train() and evaluate(): the fitted config, how many images the
    evaluation will score (0 stops the run: an evaluation of nothing), and the backend's own
    objects (converted weights, a training session)."""

    cfg: Any
    evaluation_images: int
    state: Any = None


class Backend:
    name: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]] = DETECTION_ARCHS  # what it converts weights for
    # Command-line options of this backend only: dest -> argparse.add_argument keywords (with
    # a "flag" key). Given for a config of another backend, they are refused.
    options: ClassVar[dict[str, dict[str, Any]]] = {}
    launch: ClassVar[str] = ("For several processes use torchrun: torchrun --nproc_per_node N "
                             "-m transfer CONFIG --backbone PATH")
    seed_key: ClassVar[str] = "seed"  # the config key of the run's seed (--seed sets it)

    @classmethod
    def training_images(cls, config: Path, gpus: int) -> int | None:
        """About how many images a run of `config` trains on with `gpus` GPUs (iterations x
        global batch), for the chain's cost estimate; None when not known."""
        return None

    def __init__(self, args=None):
        self.args = args  # the command line, for the backend's own options

    def load_config(self, path: Path, overrides: list[str]) -> Any:
        raise NotImplementedError

    def fit_backbone(self, cfg: Any, meta: dict, path: Path) -> Any:
        raise NotImplementedError

    def spec(self, cfg: Any, path: Path) -> Spec:
        raise NotImplementedError

    def prepare(self, cfg: Any, run) -> Prepared:
        raise NotImplementedError

    def train(self, prepared: Prepared, run) -> None:
        raise NotImplementedError

    def evaluate(self, prepared: Prepared, run) -> None:
        raise NotImplementedError

    def has_checkpoint(self, run_dir: Path) -> bool:
        raise NotImplementedError


def option(args, dest: str, default):
    """A backend option's value from the command line (None there: not given)."""
    value = getattr(args, dest, None) if args is not None else None
    return default if value is None else value


def refuse_other_options(backend: type[Backend], args, registered: list[type[Backend]],
                         config: str) -> None:
    """Options that belong to another backend are an error, not silently ignored."""
    for other in registered:
        if other is backend:
            continue
        for dest, spec in other.options.items():
            if getattr(args, dest, None) is not None:
                raise ConfigError(f"{spec['flag']} is an option of the {other.name} backend, "
                                  f"and {config} is a {backend.name} config. {backend.launch}")
