"""One transfer run, the same for every backend (transfer/backends/base.py says what a backend
adds):

1. the backbone is checked (its sha256 against its metadata, a strict load into its
   architecture); the backend loads its config and fits it to the backbone;
2. the backend prepares data, model and converted weights: everything that can fail before
   training, writing nothing; an empty evaluation split stops the run here;
3. the run folder `<output root>/<config name>/<backbone id>/seed<n>` (transfer/naming.py) is
   decided by the policy of kdcl_common/runs.py: start, resume, restart, or already finished;
   the run's identity is its resolved config and the backbone's sha256;
4. the folder is written (run.json, the config, environment.json), then the backend trains;
   a data error before the first checkpoint removes the folder this command made;
5. the result record is written only from an evaluation that saw images, then result.json,
   which marks the run finished.

The console is the same for every backend: the start line, the backend's progress
(kdcl_common.logs.Progress), the result and where the full log is; a framework's own output
goes to the run's log.txt (kdcl_common.logs.framework_output) unless --verbose.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kdcl_common import ConfigError, DataError, KdclError, artifact, fingerprint, identity, models
from kdcl_common import distributed as kdist
from kdcl_common import records
from kdcl_common.distributed import DistContext
from kdcl_common.io import atomic_write_json
from kdcl_common.logs import get_logger, metrics_text
from kdcl_common.provenance import environment
from kdcl_common.runs import FINISHED, RESUME, START, Identity, Policy, RunFolder, RunSession

from . import naming
from .backends.base import Backend, Spec

FINISHED_MARKER = "result.json"
LOGGER = "transfer"  # the project's console and log.txt lines, in every backend


@dataclass
class TransferRun:
    """What a backend's prepare, train and evaluate get: the run's config, backbone and folder
    (picklable, for backends that start their own processes)."""

    backend: str
    spec: Spec
    config_path: str
    backbone: Path
    meta: dict
    run_dir: Path
    ctx: DistContext
    action: str = START
    backbone_state: dict | None = field(default=None, repr=False)  # the artifact's weights

    @property
    def resuming(self) -> bool:
        return self.action == RESUME

    def without_weights(self) -> "TransferRun":
        return replace(self, backbone_state=None)

    def finish(self, metrics: dict, evaluated_images: int, world_size: int,
               wall_seconds: float, images_per_second: float | None, **extra) -> dict:
        """Write the result record and result.json (main process only)."""
        self._check_evaluated(evaluated_images)
        spec, meta = self.spec, self.meta
        changes = identity.accepted_changes(self.run_dir)
        record = records.make(
            stage="transfer", task=spec.task, dataset=spec.dataset,
            backend=self.backend, backbone=models.label(meta["architecture"],
                                                        meta["constructor_kwargs"]),
            method=meta.get("method", "unknown"), metrics=metrics, seed=spec.seed,
            preset=spec.preset, config=spec.name, config_file=self.config_path,
            config_hash=Identity(spec.config, locations=spec.location_keys).config_hash,
            run_dir=self.run_dir,
            world_size=world_size, wall_seconds=wall_seconds, protocol=spec.protocol,
            backbone_path=str(self.backbone), backbone_sha256=meta["sha256"],
            pretrain_config=meta.get("config_name"), pretrain_seed=meta.get("seed"),
            pretrain_run=meta.get("run_dir"), icl=meta.get("icl"),
            group="+".join(meta.get("students", [])), evaluated_images=evaluated_images,
            images_per_second=images_per_second, resumes=identity.resumes(self.run_dir),
            **(spec.extra or {}), **extra, **({"config_changes": changes} if changes else {}))
        written = records.write(spec.records, "transfer",
                                self.run_dir.relative_to(spec.output_root), [record])
        atomic_write_json(self.run_dir / FINISHED_MARKER, record)
        logging.getLogger(LOGGER).info(
            f"result: {metrics_text(metrics)} (record: {written}; the full log "
            f"is {self.run_dir / 'log.txt'})")
        return record

    def finish_evaluation(self, metrics: dict, evaluated_images: int, checkpoint: str) -> Path:
        """--eval-only's result: eval-<split>.json in the run folder (no record)."""
        self._check_evaluated(evaluated_images)
        out = self.run_dir / f"eval-{self.spec.evaluation_split}.json"
        atomic_write_json(out, {"checkpoint": checkpoint, "metrics": metrics,
                                "evaluated_images": evaluated_images,
                                "config_hash": Identity(self.spec.config, locations=self.spec
                                                        .location_keys).config_hash,
                                "backbone_sha256": self.meta["sha256"]})
        logging.getLogger(LOGGER).info(f"evaluated {checkpoint} on {self.spec.evaluation_split}: "
                                       f"{metrics_text(metrics)} (written to {out})")
        return out

    def _check_evaluated(self, images: int) -> None:
        if images <= 0:
            raise DataError(f"the evaluation of {self.run_dir} saw no images, so there is no "
                            f"result to record: check the evaluation split of {self.config_path}")


def policy(backend: Backend, spec: Spec) -> Policy:
    return Policy(finished_marker=FINISHED_MARKER, has_checkpoint=backend.has_checkpoint,
                  resumable_keys=spec.resumable_keys, recovery_keys=spec.recovery_keys,
                  location_keys=spec.location_keys,
                  config_file=spec.config_file, other_run=spec.other_run,
                  temporaries=spec.temporaries)


def check_architecture(backend: Backend, meta: dict, path: Path) -> None:
    arch = meta["architecture"]
    if arch not in backend.architectures:
        raise KdclError(f"{path} is a {arch} backbone, which cannot serve as a detection or "
                        f"segmentation backbone: the {backend.name} backend takes "
                        f"{', '.join(backend.architectures)} (CIFAR networks have no stride-32 "
                        f"stage for a feature pyramid). Fine-tune one of those.")


@dataclass
class Resolved:
    """A command's config, fitted to its backbone, and the run folder it names."""

    spec: Spec
    backbone: Path
    meta: dict
    folder: RunFolder
    cfg: Any  # the backend's own config object, fitted


def resolve(backend: Backend, config: Path, overrides: list[str], backbone: Path,
            seed: int | None = None, output_root: str | Path | None = None,
            records: str | Path | None = None) -> Resolved:
    """Load and fit the config (`seed`: --seed, the backend's seed key; `output_root`,
    `records`: --output-root, --records, over the config's), check the backbone's file against
    its sha256, and name the run folder with its identity (the config and the backbone's
    sha256). Writes nothing."""
    if seed is not None:
        overrides = [*overrides, f"{backend.seed_key}={seed}"]
    cfg = backend.load_config(Path(config), overrides)
    backbone, meta = artifact.verified_metadata(backbone)
    check_architecture(backend, meta, backbone)
    cfg = backend.fit_backbone(cfg, meta, backbone)
    spec = backend.spec(cfg, Path(config))
    spec = replace(spec, output_root=str(output_root or spec.output_root),
                   records=str(records or spec.records))
    if not isinstance(spec.seed, int) or isinstance(spec.seed, bool) or spec.seed < 0:
        # Detectron2 reads a negative SEED as "draw one at random": a run nobody can repeat
        raise ConfigError(f"{backend.seed_key}={spec.seed!r} must be an integer >= 0: the run "
                          f"folder is seed<n>, and the run must be repeatable from it")
    inputs = {"backbone": {"path": str(backbone), "sha256": meta["sha256"]}}
    if spec.data is not None:
        inputs["data"] = fingerprint.as_input(*spec.data)
    folder = RunFolder(naming.run_dir(spec.output_root, spec.name, meta, backbone, spec.seed),
                       policy(backend, spec), Identity(spec.config, inputs, spec.location_keys))
    return Resolved(spec, backbone, meta, folder, cfg)


def status(config: str | Path, backbone: str | Path, overrides: list[str] = (),
           seed: int | None = None, backend: str | None = None,
           output_root: str | Path | None = None):
    """What `python -m transfer config --backbone backbone [--seed seed] [--output-root dir]`
    would find (RunFolder.status)."""
    from . import backends

    return resolve(backends.of_config(config, backend).load()(), Path(config), list(overrides),
                   Path(backbone), seed, output_root).folder.status()


def run(backend: Backend, args) -> int:
    """`python -m transfer` for a config of `backend` (already chosen by transfer/cli.py)."""
    resolved = resolve(backend, Path(args.config), args.overrides, Path(args.backbone),
                       getattr(args, "seed", None), getattr(args, "output_root", None),
                       getattr(args, "records", None))
    if args.print_config:
        text = resolved.spec.config_text
        print(text, end="" if text.endswith("\n") else "\n")
        return 0
    ctx = kdist.init(resolved.spec.device)
    try:
        return _run(backend, args, resolved, ctx)
    finally:
        kdist.shutdown()


def _run(backend: Backend, args, resolved: Resolved, ctx: DistContext) -> int:
    logger = get_logger(LOGGER, ctx.rank)
    spec, backbone, meta, folder = (resolved.spec, resolved.backbone, resolved.meta,
                                    resolved.folder)
    run_dir = folder.path
    transfer = TransferRun(backend.name, spec, str(args.config), backbone, meta, run_dir, ctx)
    with RunSession(folder, logger, extra_writable=(records.folder(spec.records),)) as session:
        if args.eval_only:
            folder.check_evaluable(spec.evaluation_keys)
            transfer.backbone_state = artifact.build(backbone, meta).state_dict()
            prepared = backend.prepare(resolved.cfg, transfer)
            if prepared.evaluation_images <= 0:
                raise _empty_evaluation(spec, args.config)
            backend.evaluate(prepared, transfer)
            return 0
        action = session.decide(args.resume, args.restart)
        if action == FINISHED:
            logger.info(f"{run_dir} is already finished: {run_dir / FINISHED_MARKER}")
            return 0
        transfer.action = action
        # a strict load into its architecture (the file was hashed by resolve)
        transfer.backbone_state = artifact.build(backbone, meta).state_dict()
        prepared = backend.prepare(resolved.cfg, transfer)
        if prepared.evaluation_images <= 0:
            raise _empty_evaluation(spec, args.config)
        session.start(action, {
            spec.config_file: spec.config_text,
            "environment.json": json.dumps({
                **environment(ctx.world_size), "config_file": str(args.config),
                "config_hash": folder.identity.config_hash, "backbone": str(backbone),
                "backbone_meta": {k: v for k, v in meta.items() if k != "config"}},
                indent=2, default=str) + "\n"})
        logger.info(f"{spec.name} ({spec.task}, protocol {spec.protocol}) on {backbone} "
                    f"({meta['architecture']}, {meta.get('method')}), {backend.name}: "
                    f"{ctx.world_size} process(es); writing to {run_dir} (full log: log.txt "
                    f"there)" + (f"; resumed with {'; '.join(c.strip() for c in folder.changes)}"
                                 if folder.changes else ""))
        backend.train(prepared, transfer)
    return 0


def _empty_evaluation(spec: Spec, config) -> DataError:
    return DataError(f"the evaluation split ({spec.evaluation_split}) of {config} holds no images: "
                     f"a run would record an evaluation of nothing. Point the config at a "
                     f"split with images.")
