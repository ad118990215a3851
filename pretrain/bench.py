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
with the spread (min and max); --repeats runs every case again in new processes, interleaved.
Derived figures:
  KDCL overhead ratio = kdcl step / sum of the solo steps (1.0: distillation is free), paired:
                        the kdcl case's process also builds the solo students and alternates
                        kdcl and solo windows, one ratio per round (process-to-process noise,
                        large on small CPUs, cancels); and across the processes of the cases
  ICL data cost       = data time per image with one view per student / with one view
  soft-target share   = the method's target computation / the whole kdcl step
On a GPU the run also measures the bf16 matrix-multiply peak (an 8192^3 product) and reports
each case's model FLOP/s as a fraction of it. Results: <out>/<name>.json and <out>/<name>.md.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from kdcl_common import KdclError, provenance
from kdcl_common.io import atomic_write_json, atomic_write_text

from . import registry


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


def train_flops(trainer, batch) -> float:
    """FLOPs of one training step's forward and backward passes (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        inputs, _ = trainer.inputs(batch)
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
    entry = registry.get(cfg.method.name)
    if entry.needs_teacher or entry.multi_branch:
        raise KdclError(f"the benchmark compares students trained together with trained alone; "
                        f"use a config whose method is not {cfg.method.name} (a frozen teacher "
                        f"or a multi-branch network has no such comparison)")
    return cfg


def run_case(config: str, overrides: list[str], case: str, opts: dict) -> dict:
    """One case, in its own process. Returns its measurements."""
    from kdcl_common import distributed as kdist
    from kdcl_common.logs import MetricsWriter, get_logger

    from .data import loader as data_loader
    from .engine import build_trainer, configure_determinism, student_names

    kind, _, arg = case.partition(":")
    arg, _, variant = arg.partition(":")
    cfg = case_config(config, overrides, kind, arg, variant)
    ctx = kdist.init(cfg.train.device)
    device, clock = ctx.device, Clock(ctx.device)
    configure_determinism(cfg, device)
    names = student_names(cfg)
    views = int(arg) if kind == "data" else (len(names) if cfg.method.icl else 1)
    batch = cfg.optim.batch_size
    data = data_loader.build(cfg.data, views, batch, cfg.seed, ctx, cfg.train.channels_last)
    out = {"case": case, "students": names, "views": views, "batch_size": batch,
           "amp": "off" if device.type != "cuda" else cfg.train.amp,
           "channels_last": cfg.train.channels_last, "compile": cfg.train.compile}
    warmup, windows, steps = opts["warmup"], opts["windows"], opts["steps"]

    if kind == "data":  # the loader and the device's share (decoding there, flips, jitter)
        out["stages_us_per_image"] = data_stages(data, clock, opts["steps"])
        iterator = endless(data.train)
        seconds = clock.windows(lambda i: data.inputs(next(iterator)), warmup, windows,
                                opts["data_steps"])
        iterator.close()  # stop the workers now, not in the interpreter's teardown
        out["windows_ms"] = {"step": [1e3 * t for t in seconds]}
        return out

    logger = get_logger("bench", ctx.rank)
    trainer = build_trainer(cfg, ctx, data, names, logger, MetricsWriter(Path("."), enabled=False))
    for m in trainer.modules:
        m.train()
    S = len(names)
    meter = trainer.meter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if kind == "train":  # end to end: the loader feeds the step; time blocked on it is data wait
        iterator, wait = endless(data.train), [0.0]

        def step(i):
            tick = time.perf_counter()
            batch = next(iterator)
            wait[0] += time.perf_counter() - tick
            trainer.train_step(batch, meter, i)

        for i in range(warmup):
            step(i)
        wait[0] = 0.0
        seconds = clock.windows(step, 0, windows, steps)
        iterator.close()
        out["data_wait_ms"] = 1e3 * wait[0] / (windows * steps)
        out["windows_ms"] = {"step": [1e3 * t for t in seconds]}
    else:  # compute only: a few fixed batches already on the device, cycled
        cached = [device_batch(cfg, views, batch, data.num_classes, device, seed)
                  for seed in range(4)]
        input_seconds = clock.windows(lambda i: trainer.inputs(cached[i % 4]), 3, windows,
                                      steps)
        if device.type == "cpu":  # as the CPU workers hand them over: inputs ready
            cached = [b._replace(inputs=data.inputs(b)[0]) for b in cached]
        seconds = clock.windows(lambda i: trainer.train_step(cached[i % 4], meter, i),
                                warmup, windows, steps)
        out["windows_ms"] = {"step": [1e3 * t for t in seconds]}
        if kind == "kdcl":  # parts of the step timed alone: the input pipeline's device part
            # (flips, jitter, normalisation; the workers' on a CPU) and the method's targets
            out["windows_ms"]["input"] = [1e3 * t for t in input_seconds]
            logits = torch.randn(S, batch, data.num_classes, device=device)
            inputs, labels = trainer.inputs(cached[0])
            target_seconds = clock.windows(
                lambda i: trainer.method.targets(logits, labels, inputs), 3, windows, steps)
            out["windows_ms"]["soft_target"] = [1e3 * t for t in target_seconds]
        if device.type == "cuda":
            out["train_flops_per_step"] = train_flops(trainer, cached[0])
    out["peak_memory_mb"] = provenance.peak_memory_mb(device)
    if kind == "kdcl" and not variant and opts["paired"]:
        out["paired_ratio"] = paired_ratio(config, overrides, cfg, ctx, data, trainer, cached,
                                           clock, opts)
    if not bool((meter.first_bad < 0).all()):
        raise KdclError(f"{case}: the loss became NaN/inf during the benchmark")
    kdist.shutdown()
    return out


def data_stages(data, clock: Clock, batches: int) -> dict[str, float]:
    """Where the loader's time goes: microseconds per image of each stage, run in this one
    process, single-threaded as in a worker, on the first `batches` batches. Empty for data
    already in memory (CIFAR) and with data.decode=device (the workers only read there)."""
    import numpy as np

    from kdcl_common.sampling import sample_seed

    from .data import sources
    from .data.batch import Sample
    from .data.views import crop_views

    dataset, collate_fn = data.train.dataset, data.train.collate_fn
    source, policy = dataset.source, dataset.policy
    if not isinstance(source, sources.FolderSource) or dataset.encoded:
        return {}
    keys = [key for batch, _ in zip(data.train.batch_sampler, range(batches)) for key in batch]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for key in keys[:len(keys) // batches]:  # warm-up: first calls, caches
        collate_fn([dataset[key]])
    seconds = dict.fromkeys(("read", "decode", "draw", "crop", "batch"), 0.0)
    samples = []
    for epoch, pos in keys:
        index = int(dataset.indices[pos])
        t0 = time.perf_counter()
        raw = source.read(index)
        t1 = time.perf_counter()
        image = sources.decode(raw)
        t2 = time.perf_counter()
        rng = np.random.default_rng(sample_seed(dataset.seed, epoch, index))
        params = policy.draw(rng, image.shape[1], image.shape[2], dataset.views)
        t3 = time.perf_counter()
        views = crop_views(image, params.boxes, policy.size, policy.pad)
        t4 = time.perf_counter()
        for stage, t in zip(seconds, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            seconds[stage] += t
        samples.append(Sample(int(source.targets[index]), params, views=views))
    size = len(keys) // batches
    clock.sync()
    t0 = time.perf_counter()
    for start in range(0, len(samples), size):  # collate, then flips, jitter, normalisation
        data.inputs(collate_fn(samples[start:start + size]))  # (the workers' on a CPU)
    clock.sync()
    seconds["batch"] = time.perf_counter() - t0
    torch.set_num_threads(threads)
    return {stage: 1e6 * t / len(keys) for stage, t in seconds.items()}


def paired_ratio(config, overrides, cfg, ctx, data, trainer, cached, clock, opts) -> list[float]:
    """The overhead ratio measured in this one process: windows of the kdcl step and of each
    student's solo step, interleaved, so that both sides of every ratio share the process's
    memory layout and the machine's state at that moment. One ratio per round of windows."""
    from kdcl_common.logs import MetricsWriter, get_logger

    from .engine import build_trainer, student_names

    logger, steps = get_logger("bench", ctx.rank), opts["steps"]
    device, batch = ctx.device, cfg.optim.batch_size
    meter = trainer.meter()
    runners = [lambda i: trainer.train_step(cached[i % 4], meter, i)]
    for name in student_names(cfg):
        solo_cfg = case_config(config, overrides, "solo", name, "")
        solo = build_trainer(solo_cfg, ctx, data, [name], logger,
                             MetricsWriter(Path("."), enabled=False))
        batches = [device_batch(solo_cfg, 1, batch, data.num_classes, device, seed)
                   for seed in range(4)]
        if device.type == "cpu":
            batches = [b._replace(inputs=data.inputs(b)[0]) for b in batches]
        runners.append(lambda i, solo=solo, batches=batches, meter=solo.meter():
                       solo.train_step(batches[i % 4], meter, i))
    for run in runners:
        for i in range(opts["warmup"]):
            run(i)
    ratios = []
    for _ in range(opts["windows"]):
        kdcl, *solos = [clock.windows(run, 0, 1, steps)[0] for run in runners]
        ratios.append(kdcl / sum(solos))
    return ratios


def device_batch(cfg, views: int, size: int, num_classes: int, device: torch.device, seed: int):
    """A batch of random crops with the policy's random flips and jitter, already on `device`."""
    import numpy as np

    from .data.loader import Batch
    from .data.views import train_policy

    gen = torch.Generator().manual_seed(seed)
    side = cfg.data.image_size
    images = torch.randint(0, 256, (size, views, 3, side, side), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, num_classes, (size,), generator=gen)
    rng, policy = np.random.default_rng(seed), train_policy(cfg.data)
    params = [policy.draw(rng, side, side, views) for _ in range(size)]
    flip, jitter, order = (torch.from_numpy(np.stack([getattr(p, k) for p in params])).to(device)
                           for k in ("flip", "jitter", "order"))
    return Batch(images.to(device), labels.to(device), flip, jitter, order, [])


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
def summarize(runs: list[dict]) -> dict:
    """One case's figures from its runs (one per repeat, each in its own process): the median
    and spread over all their windows, and each run's median (the process-to-process spread)."""
    out = {k: v for k, v in runs[0].items() if k not in ("windows_ms", "data_wait_ms")}
    for part in runs[0]["windows_ms"]:
        windows = [w for r in runs for w in r["windows_ms"][part]]
        out[f"{part}_ms"] = spread(windows)
    out["step_ms"]["per_process"] = [statistics.median(r["windows_ms"]["step"]) for r in runs]
    out["images_per_second"] = out["batch_size"] / (out["step_ms"]["median"] / 1e3)
    if "data_wait_ms" in runs[0]:
        out["data_wait_ms"] = statistics.median(r["data_wait_ms"] for r in runs)
    if "peak_memory_mb" in runs[0]:
        out["peak_memory_mb"] = max(r["peak_memory_mb"] for r in runs)
    if "paired_ratio" in runs[0]:
        out["paired_ratio"] = [x for r in runs for x in r["paired_ratio"]]
    out["windows_ms"] = {part: [w for r in runs for w in r["windows_ms"][part]]
                         for part in runs[0]["windows_ms"]}
    return out


def derive(results: dict[str, dict], peak: float | None) -> dict:
    solo = [r for c, r in results.items() if c.startswith("solo:")]
    solo_sum = sum(r["step_ms"]["median"] for r in solo)
    out: dict = {"overhead_ratio": {}, "soft_target_share": {}, "input_share": {}}
    rounds = min((len(r["step_ms"]["per_process"]) for r in solo), default=0)
    out["overhead_ratio_per_round"], out["overhead_ratio_paired"] = {}, {}
    for case, r in results.items():
        if case.startswith("kdcl:") and case.count(":") == 1 and solo_sum:  # same settings
            out["overhead_ratio"][case[5:]] = r["step_ms"]["median"] / solo_sum
            # each round's kdcl process over the same round's solo processes
            out["overhead_ratio_per_round"][case[5:]] = [
                r["step_ms"]["per_process"][k] / sum(o["step_ms"]["per_process"][k] for o in solo)
                for k in range(min(rounds, len(r["step_ms"]["per_process"])))]
            out["soft_target_share"][case[5:]] = (r["soft_target_ms"]["median"]
                                                  / r["step_ms"]["median"])
            out["input_share"][case[5:]] = r["input_ms"]["median"] / r["step_ms"]["median"]
            if r.get("paired_ratio"):
                out["overhead_ratio_paired"][case[5:]] = spread(r["paired_ratio"])
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
             f"{report['warmup']} warm-up steps"
             + (f", in each of {report['repeats']} rounds that run every case once in a fresh "
                "process" if report.get("repeats", 1) > 1 else "")
             + "; [min–max] over the windows. Compute-only cases train on batches already on "
             "the device; `train:` includes the loader; `data:` is the loader plus the "
             "device's share of the input pipeline.", "",
             "| case | students | views | batch | step ms | data wait ms | img/s | peak MB |"
             + (" TFLOP/s | of peak |" if report.get("matmul_peak_tflops") else ""),
             "|---" * (10 if report.get("matmul_peak_tflops") else 8) + "|"]
    for case, r in report["cases"].items():
        lines.append(_row(case, r, bool(report.get("matmul_peak_tflops"))))
    lines.append("")
    for method, ratio in derived["overhead_ratio"].items():
        paired = derived.get("overhead_ratio_paired", {}).get(method)
        rounds = derived.get("overhead_ratio_per_round", {}).get(method, [])
        across = (f"{ratio:.3f}" + (f" (rounds: {', '.join(f'{x:.3f}' for x in rounds)})"
                                    if len(rounds) > 1 else ""))
        head = (f"**{paired['median']:.3f}** [{paired['min']:.3f}–{paired['max']:.3f}] paired "
                f"in one process; {across} across processes" if paired else f"**{across}**")
        lines.append(f"- KDCL overhead ratio (kdcl step / sum of solo steps), {method}: {head}; "
                     f"soft targets {100 * derived['soft_target_share'][method]:.2f} % of the "
                     f"step; input pipeline (flips, jitter, normalisation: on the device, or in "
                     f"the workers on a CPU) {100 * derived['input_share'][method]:.1f} % of it")
    for case, r in report["cases"].items():
        stages = r.get("stages_us_per_image")
        if stages:
            lines.append(
                f"- {case}, per image in one single-threaded process (µs): read "
                f"{stages['read']:.0f}, decode {stages['decode']:.0f}, draw the views "
                f"{stages['draw']:.0f}, crop {stages['crop']:.0f} ({r['views']} view"
                f"{'s' if r['views'] > 1 else ''}), batch (collate, flips, jitter, "
                f"normalisation) {stages['batch']:.0f}")
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
    parser.add_argument("--methods", nargs="+", default=list(registry.kdcl_variants()),
                        help="the KDCL variants to time (default: all four)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--windows", type=int, default=5, help="timed windows")
    parser.add_argument("--steps", type=int, default=10, help="steps per window")
    parser.add_argument("--data-steps", type=int,
                        help="batches per window of the data cases (default: 4x --steps; a "
                        "batch takes much less than a training step, and short windows are "
                        "noisy)")
    parser.add_argument("--no-paired", action="store_true",
                        help="skip the in-process paired measurement of the overhead ratio "
                        "(kdcl and solo windows interleaved in the kdcl case's process)")
    parser.add_argument("--no-data", action="store_true", help="skip the data-pipeline cases")
    parser.add_argument("--no-train", action="store_true", help="skip the end-to-end case")
    parser.add_argument("--fp32-baseline", action="store_true",
                        help="also time the kdcl case in a plain fp32 eager loop")
    parser.add_argument("--compile", action="store_true",
                        help="also time the kdcl case with torch.compile")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of all cases, each case in a fresh process per round: "
                        "process-to-process noise (large on small shared CPUs) shows and "
                        "averages out")
    parser.add_argument("--only", action="append", metavar="PREFIX",
                        help="run only the cases starting with PREFIX (e.g. data, kdcl:kdcl_naive; "
                        "repeatable)")
    parser.add_argument("--out", default="runs/bench",
                        help="folder of the JSON and Markdown (default: runs/bench, not tracked; "
                        "the reports the README quotes are copied to results/bench)")
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
    if args.only:
        cases = [c for c in cases if any(c.startswith(prefix) for prefix in args.only)]
        if not cases:
            print(f"error: no case starts with {args.only}", file=sys.stderr)
            return 2
    opts = {"warmup": args.warmup, "windows": args.windows, "steps": args.steps,
            "data_steps": args.data_steps or 4 * args.steps, "paired": not args.no_paired}
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
              **opts, "repeats": args.repeats, "matmul_peak_tflops": peak, "environment": env,
              "cases": results}
    context = mp.get_context("spawn")  # CUDA and fresh peak-memory figures need a new process
    runs: dict[str, list[dict]] = {case: [] for case in cases}
    for round_ in range(args.repeats):  # interleaved: slow drifts hit every case alike
        for case in cases:
            print(f"[bench] {case} (round {round_ + 1}/{args.repeats}) ...", flush=True)
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                try:
                    runs[case].append(pool.submit(run_case, args.config, args.overrides, case,
                                                  opts).result())
                except KdclError as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 2
            results[case] = r = summarize(runs[case])
            print(f"[bench] {case}: {r['step_ms']['median']:.1f} ms/step, "
                  f"{r['images_per_second']:.0f} img/s", flush=True)
            report["derived"] = derive(results, peak)  # written after every case: a partial
            atomic_write_json(out / f"{name}.json", report)  # run still leaves its numbers
            atomic_write_text(out / f"{name}.md", markdown(report))
    print(markdown(report))
    print(f"[bench] wrote {out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
