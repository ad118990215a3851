"""`python -m pretrain.robustness EXPORT.pth [...]`: the test loss of exported backbones under
Gaussian pixel noise, the paper's Fig. 4.

For every delta of the grid (0.00 ... 0.15 by default) and every one of `--draws` noise draws,
each test image x (0-1 pixel scale, after the evaluation crop, before normalisation) becomes
clamp(x + delta * eps, 0, 1), eps ~ N(0, 1) per pixel; the loss is the mean cross-entropy over
the test split, and a point is the mean over the draws (with their standard deviation).

Choices the paper leaves open:

- **The noise is a function of (noise seed, draw, test image, pixel)**, computed on the device
  by a counter-based hash (`gaussian_noise`): the same for any batch size, device or set of
  exports, and reproducible. Draw k uses the same eps at every delta, scaled (common random
  numbers), and every export sees the same noise: curves and the gaps between methods are
  paired comparisons, free of the noise of independent draws per point.
- **Pixels are clamped to [0, 1]** after adding the noise and kept as floats (not rounded to
  8 bits again).
- One pass over the test split per group of exports that share it: each batch is read once and
  every (draw, delta, export) is evaluated on it, batched; nothing loops over images.

One record per (export, delta), in one file per export under the `--records` folder
(kdcl_common/records.py: <records>/robustness/<run>/<student>-draws<n>-noise<seed>.json): stage
"robustness", `delta`, `draws`, `noise_seed`, metrics {loss, loss_std, top1, top1_std} (means
and sample standard deviations over the draws) and what identifies the export
(`backbone_path`, `backbone_sha256`). A (export sha256, delta, draws, noise seed) already
recorded is not evaluated again.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kdcl_common import ConfigError, DataError, KdclError, artifact, models, records, user_message
from kdcl_common.distributed import DistContext, resolve_device
from kdcl_common.sampling import ShardSampler, sample_seed

from .config import DataConfig, SyntheticConfig

STAGE = "robustness"
DELTAS = tuple(round(0.01 * i, 2) for i in range(16))  # Fig. 4: 0.00 ... 0.15
DRAWS = 10  # "each point is the mean of 10 tests"
DEFAULT_RECORDS = records.DEFAULT_FOLDER
NOISE = {"distribution": "gaussian", "scale": "0-1 pixels, before normalisation",
         "clamp": [0.0, 1.0], "shared_across_deltas": True}

EXAMPLES = """\
examples:
  python -m pretrain.robustness runs/pretrain/cifar/kdcl_general/seed0/export/cifar_resnet32.pth
  python -m pretrain.robustness \\
      runs/pretrain/cifar/{independent,dml,kdcl_general}/seed*/export/cifar_resnet32.pth
  python -m pretrain.robustness EXPORT.pth --deltas 0 0.05 0.1 --draws 3 --device cpu
  python -m pretrain.robustness EXPORT.pth --data-root /data/cifar-100-python

The test split is the one the export was evaluated on (its metadata's config.data: dataset,
root, policy, sizes), normalised with the export's own mean/std. Each record's metrics are
{loss, loss_std, top1, top1_std} over the draws; `python -m results` plots Fig. 4 from them.
"""


# ------------------------------------------------------------------------------------- noise
_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32), in two halves so that nothing overflows
    int64 (whose wrap-around is not something to rely on across devices)."""
    return (x * (c & 0xFFFF) + ((x * (c >> 16)) & 0xFFFF) * 65536) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons): a bijection of 32-bit integers whose every output bit depends on
    every input bit. Integer arithmetic: the same bits on every device."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def gaussian_noise(seed: int, draw: int, index: torch.Tensor,
                   shape: Sequence[int]) -> torch.Tensor:
    """N(0, 1) noise float32 [N, *shape] for the test images `index` (int64 [N], on the device
    the noise is made on): a pure function of (seed, draw, image, element), so it does not
    depend on the batch an image is in. Box-Muller on two 23-bit uniforms from a hash of the
    counters (|eps| < 5.8)."""
    key = sample_seed(seed, draw)
    k0, k1 = key & _M32, (key >> 32) & _M32
    size = math.prod(shape)
    per_image = _hash32(_hash32((index & _M32) ^ k0) ^ (index >> 32) ^ k1)  # [N]
    counters = _hash32(torch.arange(2 * size, device=index.device) ^ k1)  # two per element
    bits = _hash32(counters[None, :] ^ per_image[:, None]) >> 9  # [N, 2 * size], 23 bits
    u = (bits.float() + 0.5) * 2.0 ** -23  # in (0, 1): exact in float32
    u = u.view(len(index), size, 2)
    eps = torch.sqrt(-2 * torch.log(u[..., 0])) * torch.cos(2 * math.pi * u[..., 1])
    return eps.view(len(index), *shape)


# -------------------------------------------------------------------------------- evaluation
@dataclass
class Normalise:
    """The export's preprocessing: (x / 255 - mean) / std, as the training pipeline computes
    it (on_device.InputPipeline), so that delta = 0 is the plain evaluation."""

    scale: torch.Tensor
    shift: torch.Tensor

    @classmethod
    def of(cls, mean: Sequence[float], std: Sequence[float], device) -> "Normalise":
        std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        return cls(1.0 / (255.0 * std_t), -mean_t / std_t)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)


@torch.inference_mode()
def evaluate(networks: Sequence[nn.Module], normalise: Sequence[Normalise],
             batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
             deltas: Sequence[float], draws: int, seed: int,
             device: torch.device) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean CE, top-1 %) per network, delta and draw: float64 arrays [M, D, K], and the number
    of images. `batches` yields (positions int64 [B]: the images' indices in the test split,
    uint8 images [B, 3, S, S], labels [B]). Sums stay on the device until the end."""
    for net in networks:
        net.eval()
    shape = (len(networks), len(deltas), draws)
    loss = torch.zeros(shape, dtype=torch.float64, device=device)
    hits = torch.zeros(shape, dtype=torch.float64, device=device)
    seen = 0
    for positions, images, labels in batches:
        pixels = images.to(device, non_blocking=True).float()  # 0-255
        labels = labels.to(device, non_blocking=True)
        index = positions.to(device)
        seen += len(labels)
        for k in range(draws):
            eps = gaussian_noise(seed, k, index, pixels.shape[1:])
            for d, delta in enumerate(deltas):
                if delta == 0 and k > 0:  # noise-free: the same for every draw (copied below)
                    continue
                x = torch.add(pixels, eps, alpha=255.0 * delta).clamp_(0, 255)
                for m, (net, norm) in enumerate(zip(networks, normalise)):
                    logits = net(norm(x)).float()
                    loss[m, d, k] += F.cross_entropy(logits, labels, reduction="sum")
                    hits[m, d, k] += (logits.argmax(1) == labels).sum()
    for d, delta in enumerate(deltas):
        if delta == 0:
            loss[:, d, 1:], hits[:, d, 1:] = loss[:, d, :1], hits[:, d, :1]
    n = max(seen, 1)
    return (loss / n).cpu().numpy(), (100.0 * hits / n).cpu().numpy(), seen


def summarise(losses: np.ndarray, top1: np.ndarray) -> dict:
    """Metrics of one (export, delta) from its per-draw values: means and sample standard
    deviations (0 for one draw)."""
    ddof = 1 if len(losses) > 1 else 0
    return {"loss": float(losses.mean()), "loss_std": float(losses.std(ddof=ddof)),
            "top1": float(top1.mean()), "top1_std": float(top1.std(ddof=ddof))}


# ---------------------------------------------------------------------------- the test split
PROVENANCE = ("method", "seed", "name", "config_name", "config_file", "config_hash", "run_dir")


def check_provenance(path: Path, meta: dict) -> None:
    """The metadata a record needs to say which run the export comes from."""
    missing = [k for k in PROVENANCE if meta.get(k) in (None, "")]
    missing += [] if (meta.get("config") or {}).get("preset") else ["config.preset"]
    if missing:
        raise KdclError(f"{artifact.metadata_path(path)} lacks {', '.join(missing)}: only "
                        f"exports of `python -m pretrain` say which run they come from")


def data_config(path: Path, meta: dict, root: str | None) -> DataConfig:
    """The data keys of the run that made the export, as its metadata records them (keys this
    version does not know are left out); `root` replaces data.root."""
    raw = (meta.get("config") or {}).get("data")
    if not (isinstance(raw, dict) and "dataset" in raw and isinstance(meta.get("dataset"), dict)):
        raise KdclError(f"{artifact.metadata_path(path)} does not record the config its run was "
                        f"made with (config.data): only exports of `python -m pretrain` name "
                        f"their test split")
    known = {f.name for f in dataclasses.fields(DataConfig)} - {"synthetic"}
    synthetic_keys = {f.name for f in dataclasses.fields(SyntheticConfig)}
    synthetic = {k: v for k, v in (raw.get("synthetic") or {}).items() if k in synthetic_keys}
    cfg = DataConfig(**{k: v for k, v in raw.items() if k in known},
                     synthetic=SyntheticConfig(**synthetic))
    if root is not None:
        cfg.root = root
    return cfg


def eval_split(cfg: DataConfig, path: Path):
    """The evaluation source of `cfg`, built as pre-training builds it (loader.load_sources),
    except that a missing root is an error here: a generated set is not written anew."""
    from .data import loader

    if cfg.dataset not in ("imagefolder", "cifar100", "synthetic"):
        raise ConfigError(f"{path}: unknown data.dataset {cfg.dataset!r} in its metadata")
    if not Path(cfg.root).exists():
        raise DataError(f"{path}: its test data {cfg.dataset} at data.root={cfg.root!r} does not "
                        f"exist (a relative root is read from the current folder): run from the "
                        f"folder the run was made in, or pass --data-root DIR")
    _, val, _ = loader.load_sources(cfg, DistContext())
    if not len(val):
        raise DataError(f"{path}: the test split at {cfg.root} is empty")
    return val


def split_key(cfg: DataConfig) -> tuple:
    """What makes two exports' test inputs the same: they share one pass over the split."""
    resize = cfg.eval_resize if cfg.policy == "imagenet" else None
    return (cfg.dataset, str(Path(cfg.root).resolve()), cfg.policy, cfg.image_size, resize,
            dataclasses.astuple(cfg.synthetic) if cfg.dataset == "synthetic" else None)


def eval_batches(source, cfg: DataConfig, batch_size: int, workers: int, pin: bool = False
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(positions, uint8 crops [B, 3, S, S], labels) over the whole test split, cropped by the
    evaluation policy the run was evaluated with (views.eval_policy)."""
    from .data import loader
    from .data.views import eval_policy

    dataset = loader.ViewsDataset(source, np.arange(len(source)), eval_policy(cfg), 1, seed=0)
    batches = DataLoader(dataset, batch_sampler=ShardSampler(len(source), batch_size, 0, 1),
                         num_workers=workers, collate_fn=loader.collate,
                         pin_memory=pin)
    start = 0
    for batch in batches:
        if batch.bad:  # the curve must be over the same images as the run's evaluation
            raise DataError("test images that cannot be decoded: "
                            + "; ".join(str(b) for b in batch.bad[:10])
                            + ": repair them; the noise curve is only comparable over the "
                              "whole test split")
        positions = torch.arange(start, start + batch.size)
        start += batch.size
        yield positions, batch.views[:, 0], batch.labels


# ---------------------------------------------------------------------------------- exports
@dataclass
class Subject:
    """One export to evaluate."""

    path: Path
    meta: dict
    network: nn.Module
    data: DataConfig
    todo: list[float]  # the deltas not recorded yet


def recorded(path: Path, draws: int, seed: int) -> set[tuple[str, float]]:
    """(backbone sha256, delta) of the robustness records under the records folder `path` made
    with `draws` draws of noise seed `seed`. What is not a record is left to `python -m results`
    to report."""
    done: set[tuple[str, float]] = set()
    for _, r in records.scan([records.folder(path)]):
        if (isinstance(r, dict) and r.get("stage") == STAGE and r.get("draws") == draws
                and r.get("noise_seed") == seed and isinstance(r.get("delta"), (int, float))):
            done.add((str(r.get("backbone_sha256")), round(float(r["delta"]), 6)))
    return done


def prepare(paths: Sequence[str], deltas: Sequence[float], draws: int, seed: int,
            records_path: Path, root: str | None) -> tuple[list[tuple[list[Subject], object]],
                                                           list[str]]:
    """Every check, before anything is evaluated or written: each export loads strictly with
    its sha256 and names its test split, which exists and has the export's number of classes.
    Returns the exports with deltas left to evaluate, grouped by test split (with the split's
    source), and a line for each export that has none left."""
    done = recorded(records_path, draws, seed)
    subjects, skipped, seen = [], [], set()
    for name in paths:
        path = Path(name).with_suffix(".pth")
        if path.resolve() in seen:
            continue  # the same export named twice
        seen.add(path.resolve())
        network, meta = artifact.load(path)
        check_provenance(path, meta)
        cfg = data_config(path, meta, root)
        todo = [d for d in deltas if (meta["sha256"], round(d, 6)) not in done]
        if not todo:
            skipped.append(f"already evaluated: {path} (all {len(deltas)} deltas with {draws} "
                           f"draws of noise seed {seed} are in {records.folder(records_path)})")
            continue
        subjects.append(Subject(path, meta, network, cfg, todo))
    if root is not None and len({s.meta["dataset"]["name"] for s in subjects}) > 1:
        raise ConfigError("--data-root replaces the data.root of every export, but these were "
                          "trained on different datasets: evaluate them in separate commands")
    grouped: dict[tuple, list[Subject]] = {}
    for s in subjects:
        grouped.setdefault(split_key(s.data), []).append(s)
    out = []
    for group in grouped.values():
        source = eval_split(group[0].data, group[0].path)
        for s in group:
            classes = s.meta["constructor_kwargs"].get("num_classes")
            if classes is not None and classes != len(source.classes):
                raise DataError(f"{s.path} has {classes} classes, but its test split at "
                                f"{s.data.root} has {len(source.classes)}: pass the right "
                                f"--data-root")
        out.append((group, source))
    return out, skipped


def run(paths: Sequence[str], deltas: Sequence[float] = DELTAS, draws: int = DRAWS,
        seed: int = 0, records_path: str | Path = DEFAULT_RECORDS, device: str = "auto",
        batch_size: int = 500, workers: int = 2, root: str | None = None,
        log=print) -> list[dict]:
    """Evaluate the exports and append their records; returns the records written."""
    check_arguments(deltas, draws, batch_size, workers)
    dev = resolve_device(device)
    records_path = Path(records_path)
    todo, skipped = prepare(paths, deltas, draws, seed, records_path, root)
    for line in skipped:
        log(line)
    written = []
    for group, source in todo:
        cfg = group[0].data
        grid = sorted({d for s in group for d in s.todo})
        log(f"{len(group)} export(s) on {cfg.dataset} ({len(source)} test images): "
            f"{len(grid)} deltas x {draws} draws on {dev}")
        start = time.perf_counter()
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one input shape, evaluated many times
        networks = [s.network.to(dev) for s in group]
        normalise = [Normalise.of(s.meta["preprocessing"]["mean"], s.meta["preprocessing"]["std"],
                                  dev) for s in group]
        losses, top1, images = evaluate(
            networks, normalise, eval_batches(source, cfg, batch_size, workers, dev.type == "cuda"),
            grid, draws, seed, dev)
        seconds = time.perf_counter() - start
        for m, s in enumerate(group):
            rows = [record(s, delta, draws, seed, losses[m, d], top1[m, d], images, seconds)
                    for d, delta in enumerate(grid) if delta in s.todo]
            write(records_path, s, draws, seed, rows)
            written += rows
            log(f"{s.path}: loss at delta " + ", ".join(
                f"{delta:g}: {losses[m, d].mean():.4f}" for d, delta in enumerate(grid)
                if delta in s.todo))
    return written


def write(path: Path, s: Subject, draws: int, seed: int, rows: list[dict]) -> Path:
    """The export's records of this grid, with those of other deltas already in its file."""
    meta = s.meta
    run = f"{meta.get('config_name') or s.path.parent.parent.name}/seed{meta.get('seed')}/" \
          f"{meta.get('name') or s.path.stem}-draws{draws}-noise{seed}"
    target = records.path_of(path, STAGE, run)
    new = {round(float(r["delta"]), 6) for r in rows}
    kept = [r for r in (records.read_file(target) if target.is_file() else [])
            if r.get("backbone_sha256") == meta["sha256"]
            and round(float(r.get("delta", -1)), 6) not in new]
    return records.write(path, STAGE, run, sorted(kept + rows, key=lambda r: r["delta"]))


def record(s: Subject, delta: float, draws: int, seed: int, losses: np.ndarray,
           top1: np.ndarray, images: int, seconds: float) -> dict:
    meta, config = s.meta, s.meta.get("config") or {}
    kwargs = {k: v for k, v in meta["constructor_kwargs"].items() if k != "num_classes"}
    return records.make(
        stage=STAGE, task="classification", dataset=meta["dataset"]["name"],
        backend="pytorch", backbone=models.label(meta["architecture"], kwargs),
        method=meta.get("method"), metrics=summarise(losses, top1), seed=meta.get("seed"),
        preset=config.get("preset"), config=meta.get("config_name"),
        config_file=meta.get("config_file"), config_hash=meta.get("config_hash"),
        run_dir=meta.get("run_dir"), world_size=1, wall_seconds=seconds,
        student=meta.get("name"), icl=meta.get("icl"), epochs=meta.get("epochs"),
        artifact=str(s.path), backbone_path=str(s.path), backbone_sha256=meta["sha256"],
        delta=delta, draws=draws, noise_seed=seed, noise=NOISE, images=images,
        draw_losses=[round(float(v), 6) for v in losses],
        draw_top1=[round(float(v), 4) for v in top1])


def check_arguments(deltas: Sequence[float], draws: int, batch_size: int, workers: int) -> None:
    if not deltas:
        raise ConfigError("--deltas: give at least one noise level")
    bad = [d for d in deltas if not (math.isfinite(d) and d >= 0)]
    if bad:
        raise ConfigError(f"--deltas {bad}: noise levels must be finite and >= 0 (standard "
                          f"deviations on the 0-1 pixel scale)")
    if len(set(deltas)) != len(deltas):
        raise ConfigError(f"--deltas {list(deltas)} repeats a value: give each once")
    for key, value, low in (("--draws", draws, 1), ("--batch-size", batch_size, 1),
                            ("--workers", workers, 0)):
        if value < low:
            raise ConfigError(f"{key}={value} must be >= {low}")


# -------------------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.robustness", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Test loss of exported backbones under Gaussian pixel noise N(0, delta^2) "
                    "(the paper's Fig. 4): one result record per export and delta.")
    parser.add_argument("exports", nargs="+", metavar="EXPORT.pth",
                        help="exported backbones: "
                             "runs/pretrain/<config>/seed<n>/export/<student>.pth")
    parser.add_argument("--deltas", nargs="+", type=float, default=list(DELTAS), metavar="DELTA",
                        help="noise standard deviations on the 0-1 pixel scale "
                             "(default: 0.00 to 0.15 by 0.01)")
    parser.add_argument("--draws", type=int, default=DRAWS,
                        help=f"noise draws per delta, averaged (default: {DRAWS})")
    parser.add_argument("--seed", type=int, default=0,
                        help="noise seed: draw k of seed s is the same noise for every export")
    parser.add_argument("--records", default=DEFAULT_RECORDS, metavar="FOLDER",
                        help=f"the records folder: one file per export under "
                             f"<FOLDER>/robustness/ (default: {DEFAULT_RECORDS})")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=500, help="test images per batch")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="the test data's folder, if not at the data.root the run used")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        run(args.exports, args.deltas, args.draws, args.seed, args.records, args.device,
            args.batch_size, args.workers, args.data_root)
    except KdclError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
