"""`python -m chain.acceptance`: the command line (the package's docstring says what it runs)."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from kdcl_common.io import atomic_write_bytes, atomic_write_json, atomic_write_text

from . import __doc__ as DOC
from .report import environment, logs_archive, markdown
from .run import FAILED, TIMEOUT, run_stage
from .stages import MODES, Context, Stage, stages

WORK_MARKER = ".kdcl-acceptance"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chain.acceptance",
                                     description=DOC.split("\n\n")[0],
                                     epilog=DOC.split("\n\n", 1)[1],
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
                        help="these stages (and what they need): data, pretrain, bench, "
                             "bench_cifar, cifar_epoch and one per transfer config "
                             "(<backend>/<config>)")
    args = parser.parse_args(argv)
    import torch

    mode = args.mode if args.mode != "auto" else ("gpu" if torch.cuda.is_available() else "toy")
    if mode == "gpu" and not torch.cuda.is_available():
        print("error: --mode gpu needs a GPU that torch can see (torch.cuda.is_available() is "
              "False); use --mode toy", file=sys.stderr)
        return 2
    STAGES = stages(mode)
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
