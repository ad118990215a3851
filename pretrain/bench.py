"""`python -m pretrain.bench CONFIG [key=value ...]`: what collaborative training costs, measured
in one run on one machine.

Cases, each in a fresh process (clean peak memory, no warm caches carried over):
  data:V        the data pipeline alone, V views of every image (1, and one per student)
  solo:NAME     one student trained alone on one view (compute only: batches already on the
                device, so the loader does not blur the comparison)
  kdcl:METHOD   all students trained together with a KDCL variant (compute only, likewise)
  train:METHOD  the config's own method end to end, loader included: data wait vs compute
  kdcl:M:fp32   (--fp32-baseline) the same students in a plain fp32 eager loop
  kdcl:M:compile (--compile) the kdcl case with torch.compile

Each figure is the median of --windows timed windows of --steps steps after --warmup steps,
with the spread (min and max). Derived figures:
  KDCL overhead ratio = kdcl step / sum of the solo steps (1.0: distillation is free)
  ICL data cost       = data time per image with one view per student / with one view
  soft-target share   = the method's target computation / the whole kdcl step
On a GPU the run also measures the bf16 matrix-multiply peak (an 8192^3 product) and reports
each case's model FLOP/s as a fraction of it. Results: <out>/<name>.json and <out>/<name>.md.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from kdcl_common import KdclError, provenance
from kdcl_common.io import atomic_write_json, atomic_write_text

KDCL_METHODS = ("kdcl_naive", "kdcl_linear", "kdcl_minlogit", "kdcl_general")


# ---------------------------------------------------------------------------- measurement
class Clock:
    """Wall time of a window of steps, synchronising the device only at the window's ends."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def windows(self, step, warmup: int, windows: int, steps: int) -> list[float]:
        """Seconds per step of each window; `step(i)` runs one step."""
        for i in range(warmup):
            step(i)
        out = []
        for w in range(windows):
            self.sync()
            start = time.perf_counter()
            for i in range(steps):
                step(warmup + w * steps + i)
            self.sync()
            out.append((time.perf_counter() - start) / steps)
        return out


def spread(values: list[float], scale: float = 1.0) -> dict:
    return {"median": statistics.median(values) * scale, "min": min(values) * scale,
            "max": max(values) * scale}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS


def train_flops(trainer, views: torch.Tensor, labels: torch.Tensor) -> float:
    """FLOPs of one training step's forward and backward passes (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        inputs = [trainer.normalize(views[:, v]) for v in range(views.shape[1])]
        with trainer.autocast():
            loss = sum(net(inputs[k % len(inputs)]).float().logsumexp(-1).mean()
                       for k, net in enumerate(trainer.modules))
        loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------------------ cases
def case_config(config: str, overrides: list[str], kind: str, arg: str, variant: str):
    from . import config as pretrain_config

    extra = list(overrides)
    if variant == "fp32":
        extra += ["train.amp=off", "train.channels_last=false", "train.compile=false"]
    elif variant == "compile":
        extra += ["train.compile=true"]
    cfg = pretrain_config.load(config, extra)
    if kind == "solo":
        from .engine import student_names

        index = student_names(cfg).index(arg)
        cfg.students = [cfg.students[index]]
        cfg.students[0].name = arg
        cfg.method.name, cfg.method.icl = "independent", False
    elif kind in ("kdcl", "train"):
        cfg.method.name = arg
    if cfg.method.name == "kd":
        raise KdclError("the benchmark compares collaborative methods; use a config whose "
                        "method is not vanilla KD")
    return cfg


def run_case(config: str, overrides: list[str], case: str, opts: dict) -> dict:
    """One case, in its own process. Returns its measurements."""
    from kdcl_common import distributed as kdist
    from kdcl_common.logs import MetricsWriter, get_logger

    from .data import loader as data_loader
    from .engine import _configure_determinism, build_trainer, student_names

    kind, _, arg = case.partition(":")
    arg, _, variant = arg.partition(":")
    cfg = case_config(config, overrides, kind, arg, variant)
    ctx = kdist.init(cfg.train.device)
    device, clock = ctx.device, Clock(ctx.device)
    _configure_determinism(cfg, device)
    names = student_names(cfg)
    views = int(arg) if kind == "data" else (len(names) if cfg.method.icl else 1)
    batch = cfg.optim.batch_size
    data = data_loader.build(cfg.data, views, batch, cfg.seed, ctx)
    out = {"case": case, "students": names, "views": views, "batch_size": batch,
           "amp": "off" if device.type != "cuda" else cfg.train.amp,
           "channels_last": cfg.train.channels_last, "compile": cfg.train.compile}
    warmup, windows, steps = opts["warmup"], opts["windows"], opts["steps"]

    if kind == "data":
        iterator = endless(data.train)
        seconds = clock.windows(lambda i: next(iterator), warmup, windows, steps)
        iterator.close()  # stop the workers now, not in the interpreter's teardown
        out["step_ms"] = spread(seconds, 1e3)
        out["images_per_second"] = batch / statistics.median(seconds)
        return out

    logger = get_logger("bench", ctx.rank)
    trainer = build_trainer(cfg, ctx, data, names, logger, MetricsWriter(Path("."), enabled=False))
    for m in trainer.modules:
        m.train()
    S = len(names)
    sums, seen = torch.zeros(3, S, device=device), torch.zeros((), device=device)
    first_bad = torch.full((S,), -1, dtype=torch.long, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if kind == "train":  # end to end: the loader feeds the step; time blocked on it is data wait
        iterator, wait = endless(data.train), [0.0]

        def step(i):
            tick = time.perf_counter()
            batch_views, labels, _ = next(iterator)
            wait[0] += time.perf_counter() - tick
            trainer._step(batch_views, labels, sums, seen, first_bad, i)

        for i in range(warmup):
            step(i)
        wait[0] = 0.0
        seconds = clock.windows(step, 0, windows, steps)
        iterator.close()
        out["data_wait_ms"] = 1e3 * wait[0] / (windows * steps)
    else:  # compute only: a few fixed batches already on the device, cycled
        size = cfg.data.image_size
        gen = torch.Generator().manual_seed(0)
        cached = [(torch.randint(0, 256, (batch, views, 3, size, size), dtype=torch.uint8,
                                 generator=gen).to(device),
                   torch.randint(0, data.num_classes, (batch,), generator=gen).to(device))
                  for _ in range(4)]
        seconds = clock.windows(
            lambda i: trainer._step(*cached[i % 4], sums, seen, first_bad, i),
            warmup, windows, steps)
        if kind == "kdcl":  # the method's own cost: targets from fixed logits, timed alone
            logits = torch.randn(S, batch, data.num_classes, device=device)
            labels = cached[0][1]
            inputs = [trainer.normalize(cached[0][0][:, v]) for v in range(views)]
            target_seconds = clock.windows(
                lambda i: trainer.method.targets(logits, labels, inputs), 3, windows, steps)
            out["soft_target_ms"] = spread(target_seconds, 1e3)
        if device.type == "cuda":
            out["train_flops_per_step"] = train_flops(trainer, *cached[0])
    out["step_ms"] = spread(seconds, 1e3)
    out["images_per_second"] = batch / statistics.median(seconds)
    out["peak_memory_mb"] = peak_memory_mb(device)
    if not bool((first_bad < 0).all()):
        raise KdclError(f"{case}: the loss became NaN/inf during the benchmark")
    kdist.shutdown()
    return out


def endless(loader):
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def matmul_peak_tflops(device: torch.device) -> float:
    """bf16 8192^3 matrix products, the mean of 10 after 3 warm-ups."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * 8192**3 * 10 / (time.perf_counter() - start) / 1e12


# ----------------------------------------------------------------------------------- report
def derive(results: dict[str, dict], peak: float | None) -> dict:
    solo = [r for c, r in results.items() if c.startswith("solo:")]
    solo_sum = sum(r["step_ms"]["median"] for r in solo)
    out: dict = {"overhead_ratio": {}, "soft_target_share": {}}
    for case, r in results.items():
        if case.startswith("kdcl:") and case.count(":") == 1 and solo_sum:  # same settings
            out["overhead_ratio"][case[5:]] = r["step_ms"]["median"] / solo_sum
            out["soft_target_share"][case[5:]] = (r["soft_target_ms"]["median"]
                                                  / r["step_ms"]["median"])
        if peak and "train_flops_per_step" in r:
            tflops = r["train_flops_per_step"] / (r["step_ms"]["median"] / 1e3) / 1e12
            r["model_tflops"], r["fraction_of_peak"] = tflops, tflops / peak
    data = sorted((r["views"], r) for c, r in results.items() if c.startswith("data:"))
    if len(data) == 2:
        (_, one), (views, many) = data
        out["icl_data_cost"] = {"views": views,
                                "ratio": many["step_ms"]["median"] / one["step_ms"]["median"]}
    return out


def _row(case: str, r: dict, flops: bool) -> str:
    s = r["step_ms"]
    cells = [case, " + ".join(r["students"]) if not case.startswith("data:") else "(loader)",
             r["views"], r["batch_size"], f"{s['median']:.1f} [{s['min']:.1f}–{s['max']:.1f}]",
             f"{r['data_wait_ms']:.1f}" if "data_wait_ms" in r else "—",
             f"{r['images_per_second']:.0f}",
             f"{r['peak_memory_mb']:.0f}" if "peak_memory_mb" in r else "—"]
    if flops:
        cells += ([f"{r['model_tflops']:.0f}", f"{100 * r['fraction_of_peak']:.0f} %"]
                  if "model_tflops" in r else ["—", "—"])
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown(report: dict) -> str:
    env, derived = report["environment"], report["derived"]
    lines = [f"# Pre-training benchmark: {report['config']}", "",
             f"{report['device']}; {env['created']}; torch {env['versions'].get('torch')}; "
             f"git {str(env['git_commit'])[:10]}{' (dirty)' if env['git_dirty'] else ''}.",
             f"Command: `{report['command']}`", "",
             f"Median of {report['windows']} windows of {report['steps']} steps after "
             f"{report['warmup']} warm-up steps; [min–max] over the windows. Compute-only cases "
             "train on batches already on the device; `train:` includes the loader.", "",
             "| case | students | views | batch | step ms | data wait ms | img/s | peak MB |"
             + (" TFLOP/s | of peak |" if report.get("matmul_peak_tflops") else ""),
             "|---" * (10 if report.get("matmul_peak_tflops") else 8) + "|"]
    for case, r in report["cases"].items():
        lines.append(_row(case, r, bool(report.get("matmul_peak_tflops"))))
    lines.append("")
    for method, ratio in derived["overhead_ratio"].items():
        lines.append(f"- KDCL overhead ratio, {method}: **{ratio:.3f}** (kdcl step / sum of solo "
                     f"steps); soft targets {100 * derived['soft_target_share'][method]:.2f} % "
                     "of the step")
    if "icl_data_cost" in derived:
        cost = derived["icl_data_cost"]
        lines.append(f"- ICL data cost, {cost['views']} views over 1: **{cost['ratio']:.2f}x** "
                     "per image")
    if report.get("matmul_peak_tflops"):
        lines.append(f"- bf16 matrix-multiply peak measured: {report['matmul_peak_tflops']:.0f} "
                     "TFLOP/s (8192^3)")
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.bench", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a pre-training config (its students and data)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--methods", nargs="+", default=list(KDCL_METHODS),
                        help="the KDCL variants to time (default: all four)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--windows", type=int, default=5, help="timed windows")
    parser.add_argument("--steps", type=int, default=10, help="steps per window")
    parser.add_argument("--no-data", action="store_true", help="skip the data-pipeline cases")
    parser.add_argument("--no-train", action="store_true", help="skip the end-to-end case")
    parser.add_argument("--fp32-baseline", action="store_true",
                        help="also time the kdcl case in a plain fp32 eager loop")
    parser.add_argument("--compile", action="store_true",
                        help="also time the kdcl case with torch.compile")
    parser.add_argument("--out", default="results/bench", help="folder of the JSON and Markdown")
    parser.add_argument("--name", help="file name (default: config name and device)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from . import config as pretrain_config
    from .engine import student_names

    try:
        cfg = pretrain_config.load(args.config, args.overrides)
    except KdclError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = student_names(cfg)
    cases = []
    if not args.no_data:
        cases += ["data:1", f"data:{len(names)}"]
    cases += [f"solo:{n}" for n in names] + [f"kdcl:{m}" for m in args.methods]
    if not args.no_train:
        cases.append(f"train:{cfg.method.name}")
    if args.fp32_baseline:
        cases.append(f"kdcl:{args.methods[0]}:fp32")
    if args.compile:
        cases.append(f"kdcl:{args.methods[0]}:compile")
    opts = {"warmup": args.warmup, "windows": args.windows, "steps": args.steps}
    device = torch.device("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available()
                          else "cpu")
    peak = matmul_peak_tflops(device) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    env = provenance.environment()
    name = args.name or f"{cfg.name.replace('/', '-')}-{device.type}"
    out, results = Path(args.out), {}
    report = {"config": cfg.name, "config_file": args.config, "overrides": args.overrides,
              "command": "python -m pretrain.bench " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv),
              "device": (torch.cuda.get_device_name(device) if device.type == "cuda" else
                         f"CPU, {torch.get_num_threads()} threads ({env['devices'][0]})"),
              **opts, "matmul_peak_tflops": peak, "environment": env, "cases": results}
    context = mp.get_context("spawn")  # CUDA and fresh peak-memory figures need a new process
    for case in cases:
        print(f"[bench] {case} ...", flush=True)
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            try:
                results[case] = pool.submit(run_case, args.config, args.overrides, case,
                                            opts).result()
            except KdclError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        r = results[case]
        print(f"[bench] {case}: {r['step_ms']['median']:.1f} ms/step, "
              f"{r['images_per_second']:.0f} img/s", flush=True)
        report["derived"] = derive(results, peak)  # written after every case: a partial run
        atomic_write_json(out / f"{name}.json", report)  # still leaves its numbers
        atomic_write_text(out / f"{name}.md", markdown(report))
    print(markdown(report))
    print(f"[bench] wrote {out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
