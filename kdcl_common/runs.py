"""Run folders: what identifies a run, and what a command may do with the folder it names. One
policy for the pre-training stage and every transfer backend.

**Identity.** A run is what its inputs are, not where they are: its resolved config, compared
key by key, less the keys that say where things go or are read from (`location_keys`: the
output folder, the records folder, the dataset's root); the sha256 of every file it takes
weights from (a transfer run's backbone, a KD run's teacher); and the fingerprint of its data
(kdcl_common/fingerprint.py: the files' relative paths and sizes), so the same dataset staged
under another path is the same run and another dataset under the same path is not. A run folder
moved to another disk resumes there. `<run>/run.json` holds all of it (format:
kdcl_common/identity.py). It is written when the run starts, after every check has passed, so
a refused or failed command leaves an existing folder byte-identical and creates none.

**What a command does** with the folder (`RunFolder.decide`):

    the folder holds     no flag      --resume                              --restart
    nothing              start        start                                 start
    an unfinished run    refused      resume it, if the identity matches    archive it, start
    a finished run       refused      nothing (exit 0), if it matches       archive it, start

The identity matches when every input has the same sha256 and the config differs at most in the
keys that may change on resume (worker counts, log intervals). After a stop for a non-finite
loss the recovery keys (learning rate, warm-up, precision) may change too; the change is kept
in run.json and in the result record. A refusal says what differs and what to do. --restart
renames the folder to `<folder>.superseded-<UTC time>`: nothing is deleted. When a run starts or
resumes, the temporary files of its own killed atomic writes are removed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import ConfigError, KdclError
from .config import config_diff, config_hash
from .identity import FORMAT, IDENTITY_FILE, RunState, changed_inputs, read
from .io import atomic_write_json, atomic_write_text, remove_temporaries

START, RESUME, RESTART, FINISHED = "start", "resume", "restart", "finished"


@dataclass(frozen=True)
class Policy:
    """What a stage (or transfer backend) tells the run-folder policy about its runs."""

    finished_marker: str                     # written last by a finished run (relative path)
    has_checkpoint: Callable[[Path], bool]   # an unfinished run left something to resume
    resumable_keys: tuple[str, ...] = ()     # config keys that may change on --resume
    location_keys: tuple[str, ...] = ()      # where outputs go, data is read: never identity
    recovery_keys: tuple[str, ...] = ()      # ... and after a non-finite-loss stop
    config_file: str = "config.yaml"         # the run's config as the user reads it
    other_run: str = "seed=<n> or name=<new name>"  # how to make a separate run instead
    temporaries: tuple[str, ...] = ()        # glob patterns beyond kdcl_common.io's .*.tmp
    # the schema's defaults (config.schema_defaults): a key added since a run was saved is
    # the same run at its default value, so new options do not make every old run stale
    defaults: dict = field(default_factory=dict)


@dataclass
class Identity:
    config: dict                                          # the resolved config, plain
    inputs: dict[str, dict] = field(default_factory=dict)  # role -> {"path", "sha256", ...}
    locations: tuple[str, ...] = ()                       # config keys that are locations

    @property
    def config_hash(self) -> str:
        """The config's hash without its locations: the same for a run wherever it is."""
        return config_hash(self.config, self.locations)


def add_arguments(parser: argparse.ArgumentParser, weights: str):
    """--resume and --restart, as both stages' CLIs offer them (`weights`: what the run reads
    weights from, for the help); returns their mutually exclusive group for more modes."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run from its last checkpoint (a no-op when it has "
                           f"finished); refused for a run of another config or other {weights}")
    mode.add_argument("--restart", action="store_true",
                      help="archive the run folder (renamed to <folder>.superseded-<time>) and "
                           "run again")
    return mode


def superseded_name(path: Path) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return path.with_name(f"{path.name}.superseded-{stamp}")


class RunFolder:
    def __init__(self, path: str | os.PathLike, policy: Policy, identity: Identity):
        self.path, self.policy, self.identity = Path(path), policy, identity
        self.changes: list[str] = []  # accepted config changes of this resume (recovery keys)

    @property
    def finished(self) -> bool:
        return (self.path / self.policy.finished_marker).is_file()

    def decide(self, resume: bool = False, restart: bool = False) -> str:
        """'start', 'resume', 'restart' or 'finished'; raises when the command is refused.
        Reads the folder, writes nothing."""
        finished = self.finished
        if not finished and not self.policy.has_checkpoint(self.path):
            return START
        if restart:
            return RESTART
        held = "a finished run" if finished else "the checkpoint of an unfinished run"
        if not resume:
            todo = "leave it as it is (a no-op)" if finished else "continue it"
            raise KdclError(f"{self.path} holds {held}: pass --resume to {todo}, --restart to "
                            f"archive it and start again, or make a separate run with "
                            f"{self.policy.other_run}.")
        self._check_identity(held)
        return FINISHED if finished else RESUME

    def _check_identity(self, held: str) -> None:
        saved = read(self.path)
        restart = (f"--restart archives it (renamed to {self.path.name}.superseded-<time>, "
                   f"nothing is deleted) and runs again")
        if saved is None:
            raise KdclError(f"refusing to resume {self.path}: it holds {held} that does not "
                            f"record its inputs ({IDENTITY_FILE} is missing: made by an older "
                            f"kdcl-bench), so it cannot be told apart from a run of other "
                            f"weights or another config. {restart}.")
        inputs, diff = self._differences(saved)
        if inputs:
            also = "\nand its config differs too\n" + "\n".join(diff) if diff else ""
            raise KdclError(f"refusing to resume {self.path}: it was made from other weights\n  "
                            + "\n  ".join(inputs) + also
                            + f"\nIts result stays as it is. {restart} "
                            f"with these weights, or make a separate run with "
                            f"{self.policy.other_run}.")
        if diff:
            recovery = (f" After a stop for a non-finite loss, "
                        f"{', '.join(self.policy.recovery_keys)} may change too."
                        if self.policy.recovery_keys else "")
            raise ConfigError(
                f"refusing to resume {self.path}: its config differs from this one\n"
                + "\n".join(diff)
                + f"\nResume with the original config (saved in "
                  f"{self.path / self.policy.config_file}), make a separate run with "
                  f"{self.policy.other_run}, or use --restart. Only "
                  f"{', '.join(self.policy.resumable_keys) or 'nothing'} may change.{recovery}")
        self.changes = config_diff(saved.get("config") or {}, self.identity.config,
                                   ignore=self.policy.resumable_keys + self.policy.location_keys,
                                   defaults=self.policy.defaults)

    def _differences(self, saved: dict, allowed: tuple[str, ...] = ()
                     ) -> tuple[list[str], list[str]]:
        """(the inputs whose sha256 differs, the config keys that differ) between the identity
        `saved` in the folder and this run's. The resumable keys may differ, and `allowed`; after
        a stop for a non-finite loss, the recovery keys too."""
        allowed = self.policy.resumable_keys + self.policy.location_keys + tuple(allowed)
        if saved.get("stopped"):
            allowed += self.policy.recovery_keys
        return (changed_inputs(saved, self.identity.inputs),
                config_diff(saved.get("config") or {}, self.identity.config, ignore=allowed,
                            defaults=self.policy.defaults))

    def status(self) -> tuple[RunState, str]:
        """(DONE | TODO | STALE, why) for a driver such as run_all.sh: DONE is a finished run
        of this identity, STALE a run (finished or not) of other weights or another config, to
        run again with --restart. Reads the folder, writes nothing."""
        saved = read(self.path)
        if saved is None:
            if self.finished or self.policy.has_checkpoint(self.path):
                return (RunState.STALE,
                        f"{self.path} does not record its inputs (an older kdcl-bench)")
            return RunState.TODO, ""
        inputs, diff = self._differences(saved)
        if inputs:
            also = "; its config changed too: " + "; ".join(l.strip() for l in diff) if diff else ""
            return RunState.STALE, "made from other weights: " + "; ".join(inputs) + also
        if diff:
            return RunState.STALE, "its config changed: " + "; ".join(d.strip() for d in diff)
        return (RunState.DONE, "") if self.finished else (RunState.TODO, "")

    def check_evaluable(self, evaluation_keys: tuple[str, ...] = ()) -> None:
        """--eval-only: the folder must hold a trained run of this identity (the config may
        differ in the evaluation keys: another split, batch size)."""
        if not self.finished and not self.policy.has_checkpoint(self.path):
            raise KdclError(f"--eval-only evaluates a trained run, but {self.path} has no "
                            f"checkpoint: train it first (the same command without --eval-only)")
        saved = read(self.path)
        inputs, diff = (self._differences(saved, evaluation_keys) if saved
                        else (["(not recorded: made by an older kdcl-bench)"], []))
        if inputs:
            raise KdclError(f"--eval-only: {self.path} was trained from other weights\n  "
                            + "\n  ".join(inputs) + "\nEvaluate it with the weights it was "
                            "trained from, or train a run from these.")
        if diff:
            raise ConfigError(f"--eval-only: the config differs from the one {self.path} was "
                              f"trained with in more than the evaluation settings\n"
                              + "\n".join(diff))

    def start(self, action: str, files: dict[str, str] | None = None) -> None:
        """Make the folder this run's (on the main process only, after every check): archive
        it first for --restart, remove stale temporaries, write run.json and `files`."""
        saved = read(self.path) if action == RESUME else None
        if action == RESTART:
            archive = superseded_name(self.path)
            os.rename(self.path, archive)
        self.path.mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.path, self.policy.temporaries)
        history = list((saved or {}).get("changes", []))
        if self.changes:
            history.append({"resumed": _now(), "diff": self.changes})
        atomic_write_json(self.path / IDENTITY_FILE, {
            "format": FORMAT, "config_hash": self.identity.config_hash,
            "config": self.identity.config, "inputs": self.identity.inputs,
            **({"changes": history} if history else {})})
        for name, text in (files or {}).items():
            atomic_write_text(self.path / name, text)

    def mark_stopped(self, reason: str) -> None:
        """Note a stop for a non-finite loss: the next --resume may change the recovery keys."""
        saved = read(self.path)
        if saved is not None:
            atomic_write_json(self.path / IDENTITY_FILE,
                              {**saved, "stopped": {"reason": reason, "at": _now()}})


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunSession:
    """The sequence every run goes through with its folder, the same for pre-training and
    every transfer backend:

        with RunSession(folder, logger) as session:   # the folder's lock (RunLock)
            action = session.decide(resume, restart)  # start, resume, restart or finished
            ...the stage's checks and set-up, writing nothing...
            session.start(action, files)               # run.json, config, log.txt
            ...training...

    The main process takes the lock, and every process refuses the command when another
    holds it; the folder and `extra_writable` folders (where records go) are checked for
    writability before the stage's set-up. A non-finite loss marks the folder stopped (the
    next --resume may change the recovery keys). Leaving the block releases the lock."""

    def __init__(self, folder: RunFolder, logger, extra_writable: tuple[Path, ...] = ()):
        from .locks import RunLock

        self.folder, self.logger = folder, logger
        self.extra_writable = extra_writable
        self.lock = RunLock(folder.path, log=logger.warning)

    def __enter__(self) -> "RunSession":
        from . import distributed as kdist

        error = None
        if kdist.is_main():
            try:
                for place in (self.folder.path.parent, *self.extra_writable):
                    check_writable(place)
                self.lock.acquire()
            except KdclError as e:
                error = str(e)
        error = kdist.broadcast_object(error)
        if error is not None:
            self.lock.release()
            raise KdclError(error)
        return self

    def decide(self, resume: bool, restart: bool) -> str:
        return self.folder.decide(resume, restart)

    def start(self, action: str, files: dict[str, str] | None = None,
              log_file: str = "log.txt") -> None:
        from . import distributed as kdist
        from .logs import attach_file

        kdist.barrier()  # every process has read the folder before the main one changes it
        if kdist.is_main():
            self.folder.start(action, files)
            attach_file(self.logger, self.folder.path / log_file)
        kdist.barrier()

    def __exit__(self, kind, error, traceback) -> None:
        from . import NonFiniteLossError
        from . import distributed as kdist

        try:
            if isinstance(error, NonFiniteLossError) and kdist.is_main():
                self.folder.mark_stopped("non-finite loss")
        finally:
            self.lock.release()


def check_writable(folder: Path) -> None:
    """A run can write in `folder`, which need not exist yet: the nearest existing folder on
    the way is a folder, writable, on a writable file system. Else a KdclError that says which
    and what to do, before a run spends hours to fail at its first write. Writes nothing."""
    folder = Path(folder).absolute()
    for path in (folder, *folder.parents):
        if not path.exists():
            continue
        if not path.is_dir():
            raise KdclError(f"{folder} cannot be a folder: {path} is a file. Choose another "
                            f"location (output_root / records) or move that file")
        if os.access(path, os.W_OK | os.X_OK):
            return
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
        why = "is on a read-only file system" if read_only else "is not writable (permissions)"
        raise KdclError(f"cannot write in {folder}: {path} {why}. Choose another location "
                        f"(output_root / records) or make it writable")
