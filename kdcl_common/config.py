"""YAML configs with `_base_` inheritance, a typed schema and `key=value` overrides.

A config file is YAML. Its optional `_base_` key names one or more files (relative to it) that are
loaded first and deep-merged under it, so a recipe is written once and each experiment only says
what differs (lists are replaced, not merged). The result is checked against a dataclass schema
with OmegaConf: every key must exist in the schema (an unknown key is an error naming the nearest
valid one), every value must have the schema's type, and `${oc.env:NAME}` reads an environment
variable (used for dataset roots).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf import errors as oc_errors

from . import ConfigError

T = TypeVar("T")
BASE_KEY = "_base_"


def option(default: Any = MISSING, help: str = "", **kwargs: Any) -> Any:
    """A schema field with a help text, shown by the CLIs' --help."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: _copy(value), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


# --------------------------------------------------------------------------------------- loading
# Bounds on a YAML document, checked before anything is built from it: a config nests a few
# levels and holds a few hundred values. An alias (*name) is a reference, so a few lines of
# nested aliases stand for billions of values, which every later step (OmegaConf, the dump,
# the comparison with run.json) would copy out.
MAX_DEPTH = 50
MAX_VALUES = 100_000


class _Bounded:
    """A PyYAML loader mixin that refuses documents nested deeper than MAX_DEPTH (PyYAML's
    composer recurses, and dies of a RecursionError near 300 levels), or whose aliases expand
    to more than MAX_VALUES values, or, with `aliases` False, any anchor or alias."""

    aliases = True

    def compose_document(self):
        self._depth = 0
        node = super().compose_document()
        _expanded_size(node)
        return node

    def compose_node(self, parent, index):
        event = self.peek_event()
        if not self.aliases and (isinstance(event, yaml.AliasEvent) or
                                 getattr(event, "anchor", None) is not None):
            raise _Refused("holds a YAML anchor or alias (&name, *name), which an override "
                           "may not use: write the value out in full (a string that starts "
                           "with * or & must be quoted: key='\"*text\"')", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"is nested more than {MAX_DEPTH} levels deep, where a config "
                               f"nests a few: is it the right file?", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Refused(Exception):
    """A YAML document past the bounds, and where: a ConfigError once its source is known."""

    def __init__(self, message: str, mark=None):
        super().__init__(message)
        self.line = mark.line + 1 if mark is not None else None


def _expanded_size(root) -> int:
    """The number of values the composed document stands for, aliases expanded, counted over
    its distinct nodes only (each alias is the node it names): raises _Refused past MAX_VALUES
    or for an alias inside the value it names (a recursive structure)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = [v for pair in node.value for v in pair] if isinstance(
            node, yaml.MappingNode) else node.value
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_VALUES:
                raise _Refused(f"has YAML aliases (*name) that expand to more than "
                               f"{MAX_VALUES:,} values, where a config holds a few hundred: "
                               f"write the values out, or alias fewer of them", node.start_mark)
            continue
        if id(node) in open_nodes:
            raise _Refused("has a YAML alias inside the value it names: a config cannot hold "
                           "itself", node.start_mark)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack += [(c, False) for c in children if id(c) not in sizes]
    return sizes[id(root)]


class _Loader(_Bounded, yaml.SafeLoader):
    """YAML 1.2 booleans and floats. YAML 1.1 also reads on/off/yes/no as booleans, which turns
    `amp: off` into False, and reads a float without a dot (`lr=1e-3`) as a string."""


class _SafeLoader(_Bounded, yaml.SafeLoader):
    """PyYAML's safe_load (YAML 1.1), bounded."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def load_yaml(text: str, source: str = "the YAML", aliases: bool = True,
              loader: type = _Loader) -> Any:
    """`text` parsed by `loader` within the bounds above (ConfigError naming `source` past
    them; yaml.YAMLError for text that is not YAML). `aliases` False refuses anchors and
    aliases altogether (override values)."""
    parser = loader(text)
    parser.aliases = aliases
    try:
        return parser.get_single_data()
    except _Refused as e:
        where = f", line {e.line}," if e.line and "\n" in text.strip() else ""
        raise ConfigError(f"{source}{where} {e}") from None
    finally:
        parser.dispose()


def safe_load_yaml(text: str, source: str = "the YAML") -> Any:
    """yaml.safe_load's reading (YAML 1.1, as Detectron2 and yacs read their configs), bounded."""
    return load_yaml(text, source, loader=_SafeLoader)


def read_text(path: Path, kind: str = "YAML") -> str:
    """A config file's text; a ConfigError for a file that is not text (a checkpoint, an
    image or an archive given as the config)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not a text file (byte {e.start} is not UTF-8): a config "
                          f"is a {kind} text file; was a checkpoint, image or archive given "
                          f"in its place?") from None
    if "\0" in text:
        raise ConfigError(f"{path} is not a text file (it holds NUL bytes): a config is a "
                          f"{kind} text file; was a checkpoint, image or archive given in its "
                          f"place?")
    return text


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config and the `_base_` files it names, merged (bases first)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"circular _base_ chain: {chain}")
    try:
        data = load_yaml(read_text(path), str(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, "
                          f"not {type(data).__name__}")
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY}: {bases!r} must name a config file or a list of "
                          f"them, as paths relative to {path.parent} (e.g. {BASE_KEY}: "
                          f"_base.yaml, or {BASE_KEY}: [a.yaml, b.yaml])")
    merged: dict = {}
    for base in bases:
        merged = _deep_merge(merged, read_yaml(path.parent / base, (*_seen, path)))
    return _deep_merge(merged, data)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`a.b=value` strings -> (key, value) with YAML-typed values (`lr=0.1`, `milestones=[1,2]`)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.1)")
        shown = item if len(item) <= 60 else item[:57] + "..."
        try:
            value = load_yaml(raw, f"override {shown!r}", aliases=False) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def load_config(schema: type[T], path: str | Path, overrides: list[str] = ()) -> T:
    """Load `path` (with its bases) and `overrides` into an instance of the dataclass `schema`."""
    data = read_yaml(path)
    check_keys(schema, data)
    pairs = parse_overrides(list(overrides))
    for key, _ in pairs:
        check_key_path(schema, key)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(data))
        for key, value in pairs:
            OmegaConf.update(cfg, key, value, merge=True)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"{path}: these keys need a value: {', '.join(missing)}")
        OmegaConf.resolve(cfg)
        return OmegaConf.to_object(cfg)
    except oc_errors.InterpolationResolutionError as e:
        raise ConfigError(_interpolation_message(e)) from None
    except oc_errors.OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        first_line = str(e).splitlines()[0]
        raise ConfigError(f"config key {key!r}: {first_line}" if key else first_line) from None


def load_named(schema: type[T], path: str | Path, overrides: list[str], config_root: Path) -> T:
    """`load_config`, then name the run after the file when the config names none: its path
    under `config_root` without .yaml (smoke/kdcl_naive), else its file name."""
    cfg = load_config(schema, path, overrides)
    if cfg.name is None:
        path = Path(path).resolve()
        try:
            cfg.name = str(path.relative_to(config_root).with_suffix(""))
        except ValueError:
            cfg.name = path.stem
    check_run_name(cfg.name)
    return cfg


def check_run_name(name: str) -> None:
    """A run's name is a path below the output folder: it must stay inside it."""
    parts = Path(name).parts
    if not name.strip() or Path(name).is_absolute() or ".." in parts or "." in parts:
        raise ConfigError(f"name={name!r} must be a relative path that stays inside the output "
                          f"folder (no leading '/', no '.' or '..'), e.g. smoke/kdcl_naive or "
                          f"my_sweep/lr0.05")


def check_choice(key: str, value: Any, allowed) -> None:
    """A ConfigError naming the allowed values when `value` is not one of them."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(map(str, allowed))}")


def _interpolation_message(e: Exception) -> str:
    key = getattr(e, "full_key", "?")
    text = str(e).splitlines()[0]
    if "Environment variable" in text:
        var = text.split("'")[1] if "'" in text else "?"
        return (f"config key {key!r} reads the environment variable {var}, which is not set: "
                f"export {var}=/path/to/data, or override it: {key}=/path/to/data")
    return f"config key {key!r}: {text}"


# ------------------------------------------------------------------------------- key validation
def _field_types(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1:
        return args[0]
    return tp


def _unknown_key(full_key: str, valid: list[str]) -> ConfigError:
    name = full_key.rsplit(".", 1)[-1]
    parent = full_key.rpartition(".")[0]
    near = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{(parent + '.' if parent else '') + near[0]}'?" if near else ""
    where = f" under '{parent}'" if parent else ""
    return ConfigError(f"unknown config key '{full_key}'.{hint} Valid keys{where}: "
                       f"{', '.join(sorted(valid))}")


def check_keys(schema: type, data: dict, prefix: str = "") -> None:
    """Raise ConfigError for any key in `data` that `schema` does not define (recursively)."""
    types = _field_types(schema)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in types:
            raise _unknown_key(full, list(types))
        tp = _unwrap(types[key])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            check_keys(tp, value, full + ".")
        elif typing.get_origin(tp) is list and isinstance(value, list):
            (item_type,) = typing.get_args(tp) or (Any,)
            if dataclasses.is_dataclass(item_type):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        check_keys(item_type, item, f"{full}.{i}.")


def check_key_path(schema: type, dotted: str) -> None:
    """Raise ConfigError unless `dotted` (e.g. `optim.lr`, `students.0.arch`) names a schema key."""
    tp: Any = schema
    walked: list[str] = []
    for part in dotted.replace("[", ".").replace("]", "").split("."):
        tp = _unwrap(tp)
        if dataclasses.is_dataclass(tp):
            types = _field_types(tp)
            if part not in types:
                raise _unknown_key(".".join([*walked, part]), list(types))
            tp = types[part]
        elif typing.get_origin(tp) is list:
            if not part.isdigit():
                raise ConfigError(f"'{'.'.join(walked)}' is a list: index it with a number, "
                                  f"e.g. {'.'.join(walked)}.0")
            tp = (typing.get_args(tp) or (Any,))[0]
        else:  # a free-form dict (e.g. constructor kwargs) or a leaf: anything below is allowed
            return
        walked.append(part)


# ------------------------------------------------------------------------------ dump and compare
def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_hash(cfg: Any, locations: tuple[str, ...] = ()) -> str:
    """A short, stable hash of the resolved config, without the `locations` keys (where its
    outputs and data are: not what the run is)."""
    data = to_dict(cfg) if not isinstance(cfg, dict) else cfg
    blob = json.dumps(without(data, locations), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def without(config: dict, keys: tuple[str, ...]) -> dict:
    """`config` less the dotted `keys`; an entry `a.b.*` removes everything below `a.b`."""
    if not keys:
        return config
    out = json.loads(json.dumps(config, default=str))
    for key in keys:
        *parents, last = key.removesuffix(".*").split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(d, list) and any(isinstance(v, (dict, list)) for v in d):
        out = {}
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: d}


def schema_defaults(schema: type, prefix: str = "") -> dict[str, Any]:
    """Every key of a config schema with a default, flattened: `{"data.cutout": False, ...}`."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        tp = _unwrap(typing.get_type_hints(schema)[f.name])
        if dataclasses.is_dataclass(tp):
            out.update(schema_defaults(tp, f"{prefix}{f.name}."))
        elif f.default is not dataclasses.MISSING and f.default is not MISSING:
            out[prefix + f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[prefix + f.name] = f.default_factory()
    return out


def config_diff(old: dict, new: dict, ignore: tuple[str, ...] = (),
                defaults: dict[str, Any] | None = None) -> list[str]:
    """Lines `key: old -> new` for every leaf that differs. Keys in `ignore` are skipped; an
    entry `a.b.*` skips everything below `a.b`. A key absent from `old` whose new value is its
    entry in `defaults` does not differ: a key added to the schema since `old` was saved, at a
    value that keeps the old behaviour."""
    a, b = flatten(old), flatten(new)
    prefixes = tuple(k[:-1] for k in ignore if k.endswith(".*"))
    defaults = defaults or {}
    lines = []
    for key in sorted(set(a) | set(b)):
        if key in ignore or key.startswith(prefixes) or \
                a.get(key, "<absent>") == b.get(key, "<absent>"):
            continue
        if key not in a and key in defaults and b[key] == defaults[key]:
            continue
        lines.append(f"  {key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return lines


def describe(schema: type, prefix: str = "") -> list[str]:
    """One line per key, `key = default` then its help, for --help."""
    lines = []
    for f in dataclasses.fields(schema):
        tp = _unwrap(typing.get_type_hints(schema)[f.name])
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, key + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "???"
        if default is MISSING:
            default = "???"
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            item = typing.get_args(tp)[0]
            sub = ", ".join(g.name for g in dataclasses.fields(item))
            default = f"[{{{sub}}}, ...]"
        lines.append(f"  {f'{key} = {default!s}':<38} {f.metadata.get('help', '')}".rstrip())
    return lines
