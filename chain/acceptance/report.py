"""The acceptance report: report.json, report.md and the stages' logs as one archive, rewritten
after every stage."""
from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

from transfer import backends

from .stages import importable


def logs_archive(folder: Path) -> bytes:
    """The stages' logs as one .tar.gz (logs/<stage>.log)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for log in sorted(folder.rglob("*.log")):
            tar.add(log, arcname=f"logs/{log.relative_to(folder)}")
    return data.getvalue()


def environment(mode: str) -> dict:
    import torch

    from kdcl_common import provenance

    env = provenance.environment()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"mode": mode, "gpu": gpu, "cpu_cores": os.cpu_count(), "python": sys.version.split()[0],
            "optional": {m: importable(m) for m in
                         ("pycocotools", "mmcv", *(e.requires for e in backends.REGISTRY))},
            **{k: env[k] for k in ("created", "host", "platform", "cuda", "devices",
                                   "versions", "git_commit", "git_dirty")}}


def headline(result: dict) -> str:
    """The headline figures of a stage's measurements, for the Markdown table."""
    m = result.get("measured", {})
    parts = []
    for key, value in m.items():
        if isinstance(value, dict) and "images_per_second" in value:
            parts.append(f"{key}: {value['images_per_second']:.0f} img/s ({value['step_ms']} ms"
                         + (f", wait {value['data_wait_ms']} ms" if "data_wait_ms" in value
                            else "") + ")")
        elif isinstance(value, dict) and "channels_last_speedup" in value:
            parts.append(f"{key}: channels-last {value['channels_last_speedup']:.2f}x")
        elif key.startswith("end_to_end_over_compute"):
            parts.append(f"{key}: {value:.2f}")
        elif key in ("seconds_per_iteration", "images_per_second", "peak_memory_mb",
                     "data_wait_seconds", "top1") and value is not None:
            parts.append(f"{key}: {value}")
        elif key == "metrics":
            main = {k: v for k, v in value.items() if k in ("bbox_AP", "segm_AP", "mIoU", "AP",
                                                           "box_AP", "mask_AP", "aAcc")}
            parts.append(", ".join(f"{k} {v:.1f}" for k, v in main.items()))
    return "; ".join(p for p in parts if p) or result.get("why", "")


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Acceptance run ({env['mode']})", "",
             f"{env['gpu'] or 'no GPU'}; {env['cpu_cores']} CPU cores; Python {env['python']}; "
             f"torch {env['versions'].get('torch')}, torchvision "
             f"{env['versions'].get('torchvision')}; {env['created']}; git "
             f"{str(env['git_commit'])[:10]}{' (dirty)' if env['git_dirty'] else ''}.",
             "Installed: " + ", ".join(f"{k} {'yes' if v else 'no'}"
                                       for k, v in env["optional"].items()) + ".", "",
             f"Total {report.get('seconds', 0):.0f} s"
             + (f", {report['jobs']} stages at a time (their times are not measurements)"
                if report.get("jobs", 1) > 1 else "") + f". Command: `{report['command']}`", "",
             *(["Set-up before it (scripts/gpu_check.sh), seconds: " + ", ".join(
                 f"{k} {v}" for k, v in report["setup_seconds"].items()), ""]
               if report.get("setup_seconds") else []),
             "| stage | status | seconds | measured |", "|---|---|---|---|"]
    for name, r in report["stages"].items():
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', '')} | "
                     f"{headline(r).replace('|', '/')} |")
    lines.append("")
    for name, r in report["stages"].items():
        if r.get("fallbacks"):
            lines.append(f"- {name} fell back: " + "; ".join(r["fallbacks"]))
        if r.get("error"):
            lines += [f"- {name} {r['status']}:", "", "```", r["error"], "```"]
    return "\n".join(lines) + "\n"


