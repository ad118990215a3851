"""Running one acceptance stage: its commands one after another, each in its own process group
(chain/runner.py, as the chain's steps), under the stage's deadline; what it measured."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from kdcl_common import KdclError

from .. import runner
from .stages import Context, Stage, importable

PASSED, FAILED, TIMEOUT, SKIPPED = "passed", "failed", "timeout", "skipped"


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
        with open(log, "a") as out:
            out.write(f"$ python -m {' '.join(argv)}\n")
        outcome = runner.run([sys.executable, "-m", *argv], env=env, log=log, deadline=deadline)
        code, tail = outcome.code, outcome.tail
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


