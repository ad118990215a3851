"""The SLURM resources of each step: chain/resources.yaml (documented defaults), or the user's
--resources file over it, then `section.key=value` overrides; a step takes `defaults`, its
stage's section over it, and for transfer `backends.<name>` over that."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kdcl_common import ConfigError
from kdcl_common.config import load_yaml, parse_overrides

from .plan import STAGES, Step

DEFAULTS_FILE = Path(__file__).with_name("resources.yaml")


@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 64
    mem: str | None = None
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_seconds: int = 300
    requeue: bool = True
    sbatch: tuple[str, ...] = ()
    images_per_second_per_gpu: float | None = None

    @property
    def processes_per_node(self) -> int:
        return max(self.gpus_per_node, 1)

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    def sbatch_options(self) -> list[str]:
        """The #SBATCH options these resources make (dependencies are added per submission)."""
        out = [f"--nodes={self.nodes}", "--ntasks-per-node=1",
               f"--cpus-per-task={self.cpus_per_task}", f"--time={self.time}"]
        if self.gpus_per_node:
            out.append(f"--gpus-per-node={self.gpus_per_node}")
        for key in ("mem", "partition", "account", "qos", "constraint"):
            if getattr(self, key) not in (None, ""):
                out.append(f"--{key}={getattr(self, key)}")
        if self.requeue:
            out.append("--requeue")
        if self.signal_seconds:
            out.append(f"--signal=B:USR1@{self.signal_seconds}")
        return [*out, *self.sbatch]


KEYS = tuple(f.name for f in fields(Resources))
SECTIONS = ("defaults", *STAGES, "backends")


def _read(path: Path) -> dict:
    try:
        data = load_yaml(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"--resources {path}: {e.strerror}") from None
    except Exception as e:  # noqa: BLE001 - yaml's errors
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections ({', '.join(SECTIONS)})")
    return data


def _check(where: str, section: Any) -> dict:
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a mapping of resource keys ({', '.join(KEYS)})")
    for key in section:
        if key not in KEYS:
            near = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise ConfigError(f"unknown resource key '{where}.{key}'.{hint} The keys: "
                              f"{', '.join(KEYS)}")
    return section


def load(path: Path | None = None, overrides: list[str] = ()) -> "ResourceTable":
    """The defaults file, `path` merged over it, then `overrides` (section.key=value)."""
    table = _read(DEFAULTS_FILE)
    if path is not None:
        user = _read(Path(path))
        for name, section in user.items():
            if name not in SECTIONS:
                raise ConfigError(f"{path}: unknown section '{name}': the sections are "
                                  f"{', '.join(SECTIONS)}")
            if name == "backends":
                table["backends"] = {**table.get("backends", {}), **(section or {})}
            else:
                table[name] = {**table.get(name, {}), **(section or {})}
    for item, (key, value) in zip(overrides, parse_overrides(list(overrides))):
        parts = key.split(".")
        if parts[-1] == "time":  # YAML 1.1 would read 48:00:00 as seconds
            value = item.partition("=")[2]
        if parts[0] == "backends" and len(parts) == 3:
            table.setdefault("backends", {}).setdefault(parts[1], {})[parts[2]] = value
        elif parts[0] in SECTIONS and parts[0] != "backends" and len(parts) == 2:
            table.setdefault(parts[0], {})[parts[1]] = value
        else:
            raise ConfigError(f"resource override {key}={value!r}: write <section>.<key>=value "
                              f"(sections: {', '.join(s for s in SECTIONS if s != 'backends')}) "
                              f"or backends.<backend>.<key>=value")
    for name, section in table.items():
        if name == "backends":
            for backend, values in (section or {}).items():
                _check(f"backends.{backend}", values)
        elif name in SECTIONS:
            _check(name, section or {})
        else:
            raise ConfigError(f"unknown resources section '{name}': the sections are "
                              f"{', '.join(SECTIONS)}")
    return ResourceTable(table)


@dataclass(frozen=True)
class ResourceTable:
    table: dict

    def of(self, step: Step) -> Resources:
        values = {**(self.table.get("defaults") or {}), **(self.table.get(step.stage) or {})}
        if step.backend:
            values.update((self.table.get("backends") or {}).get(step.backend) or {})
        values["sbatch"] = tuple(values.get("sbatch") or ())
        if not isinstance(values.get("time", ""), str):
            raise ConfigError(f"resources of {step.stage}: time={values['time']!r}: quote it, "
                              f"e.g. time: \"48:00:00\" (YAML reads 48:00:00 unquoted as a "
                              f"number of seconds)")
        try:
            resources = Resources(**values)
        except TypeError as e:
            raise ConfigError(f"resources of {step.stage}: {e}") from None
        for key in ("nodes", "gpus_per_node", "cpus_per_task", "signal_seconds"):
            value = getattr(resources, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0 or \
                    (key in ("nodes", "cpus_per_task") and value < 1):
                raise ConfigError(f"resource {step.stage}.{key}={value!r} must be an integer "
                                  f">= {1 if key in ('nodes', 'cpus_per_task') else 0}")
        return resources
