"""The method registry (pretrain/registry.py) is the one list of methods: what a method declares
there is all the config check, the schema, --help, the chain and the engine know of it, and
adding a method is one file and one entry."""
import json
import subprocess
import sys

import pytest
import torch

from kdcl_common import ConfigError
from kdcl_common.config import to_dict
from kdcl_common.runs import Identity, RunFolder
from pretrain import cli, config, methods, registry
from pretrain.engine import run_identity

from .conftest import REPO, SMOKE, tiny_overrides, read_records


def test_every_registered_method_imports_and_is_a_method():
    for entry in registry.METHODS:
        cls = methods.method_class(entry.name)
        assert issubclass(cls, methods.Method), entry.name
        assert registry.of_config(entry.name) is entry
    assert registry.of_config("kdcl_general_icl").name == "kdcl_general"
    assert registry.of_config("kd_wrn_16_2_to_resnet32").name == "kd"
    assert registry.kdcl_variants() == ("kdcl_naive", "kdcl_linear", "kdcl_minlogit",
                                        "kdcl_general")
    assert registry.NAMES == tuple(m.name for m in registry.METHODS)


def test_the_registry_is_read_without_torch():
    code = ("import sys, pretrain.registry, chain.plan, results.tabulate; "
            "pretrain.registry.options(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("entry", [m for m in registry.METHODS if m.smoke], ids=lambda m: m.name)
def test_every_method_marked_smoke_has_its_smoke_config(entry):
    """The smoke chain runs pretrain/configs/smoke/<name>.yaml of each entry marked smoke."""
    path = SMOKE / f"{entry.name}.yaml"
    assert path.is_file(), (f"registry entry {entry.name!r} is marked smoke=True but {path} is "
                            f"missing: add it, or drop smoke=True")
    assert config.load(path).method.name == entry.name


def test_every_smoke_config_is_named_after_its_registered_method():
    for path in sorted(SMOKE.glob("[!_]*.yaml")):
        assert config.load(path).method.name == path.stem, path


def test_the_chain_refuses_a_smoke_method_without_its_config(tmp_path):
    from chain import plan
    from kdcl_common import KdclError

    configs = tmp_path / "pretrain" / "configs" / "smoke"
    configs.mkdir(parents=True)
    for name in ("independent", "one"):
        (configs / f"{name}.yaml").write_text("{}\n")
    with pytest.raises(KdclError, match=r"smoke has no config for clnn, kdcl_general, "
                                        r"kdcl_minlogit \(the smoke methods of "
                                        r"pretrain/registry.py\): add <name>.yaml there"):
        plan.pretrain_configs("smoke", tmp_path)


# ------------------------------------------------------------------- options: schema and checks
@pytest.mark.parametrize("config_name,override,message", [
    ("kdcl_minlogit", "method.splits=[{stage: layer4, fan_out: 2}]",
     "method.splits is only used by methods one, clnn, not kdcl_minlogit: remove it"),
    ("dml", "method.teacher=x.pth", "method.teacher is only used by method kd, not dml: remove it"),
    ("clnn", "method.rampup_epochs=10",
     "method.rampup_epochs is only used by method one, not clnn: remove it"),
    ("one", "method.general_error=cross_entropy",
     "method.general_error is only used by method kdcl_general, not one: remove it"),
    ("kdcl_general", "method.general_error=absolute",
     "method.general_error='absolute' is not one of: squared, cross_entropy"),
    ("independent", "method.name=kd",
     "method kd needs method.teacher=<value>: an exported backbone .pth"),
])
def test_a_method_key_is_refused_for_the_methods_that_do_not_read_it(config_name, override,
                                                                     message, capsys):
    argv = [str(SMOKE / f"{config_name}.yaml"), "data.root=/nowhere", override, "--print-config"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert not out and err.startswith("error: ") and message in err and "Traceback" not in err


def test_help_documents_each_method_key_with_the_methods_that_read_it(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("  method.")}
    for key, (opt, users) in registry.options().items():
        assert f" {', '.join(users)}: {opt.help[:30]}" in lines[f"method.{key}"], key
    assert "one, clnn: where the network branches" in lines["method.splits"]
    assert "one of independent, dml, kd, one, clnn" in lines["method.name"]


def test_two_methods_declaring_one_key_differently_are_an_error(monkeypatch):
    other = registry.Option("splits", list, [], "something else")
    entry = registry.Entry("forked", "pretrain.methods:Independent", "Forked", options=(other,))
    monkeypatch.setattr(registry, "METHODS", (*registry.METHODS, entry))
    with pytest.raises(TypeError, match="'splits' is declared differently by one, clnn and "
                                        "forked: declare one Option"):
        registry.options()


# Each smoke config's `method:` section as run.json saved it before the options moved into the
# registry (resolved by the code of main at 6c2319f).
SAVED = {
    "clnn": {"name": "clnn", "temperature": 2.0, "kd_weight": 0.5, "ce_weight": 0.5,
             "splits": [{"stage": "layer3", "fan_out": 2}, {"stage": "layer4", "fan_out": 2}],
             "icl": False, "teacher": None, "general_error": "squared"},
    "dml": {"name": "dml", "temperature": 1.0, "kd_weight": 1.0, "ce_weight": 1.0, "splits": [],
            "icl": True, "teacher": None, "general_error": "squared"},
    "kdcl_general": {"name": "kdcl_general", "temperature": 2.0, "kd_weight": 1.0,
                     "ce_weight": 1.0, "splits": [], "icl": True, "teacher": None,
                     "general_error": "squared"},
    "one": {"name": "one", "temperature": 3.0, "kd_weight": 1.0, "ce_weight": 1.0,
            "splits": [{"stage": "layer4", "fan_out": 3}], "icl": False, "teacher": None,
            "general_error": "squared"},
}


@pytest.mark.parametrize("name", sorted(SAVED))
def test_runs_saved_before_stay_the_same_runs(tmp_path, name):
    """A finished run saved with the old schema is still 'done' (its identity unchanged), except
    ONE's: it trained without the ramp-up, which its config now resolves (a new key)."""
    cfg = config.load(SMOKE / f"{name}.yaml", [f"output_root={tmp_path}"])
    saved = {**to_dict(cfg), "method": SAVED[name]}
    folder = RunFolder(cfg.run_dir, config.RUNS, Identity(saved))
    folder.start("start")
    (cfg.run_dir / config.RUNS.finished_marker).parent.mkdir()
    (cfg.run_dir / config.RUNS.finished_marker).write_text("{}")
    state = RunFolder(cfg.run_dir, config.RUNS, run_identity(cfg)).status()
    if name == "one":
        why = "its config changed: method.rampup_epochs: '<absent>' -> 1.0666666666666667"
        assert state == ("stale", why)
    else:
        assert state == ("done", "")


# ----------------------------------------------------------------- adding a method by the recipe
METHOD_FILE = '''
"""A method defined outside the package: the students distil from `scale` x their mean logit."""
import torch

from pretrain.losses import Targets
from pretrain.methods import Method


class Scaled(Method):
    def __init__(self, cfg, num_students, device, env=None):
        super().__init__(cfg, num_students, device, env)
        self.scale = cfg.scale  # its own option, declared by its registry entry
        self.mixing = torch.ones(num_students, 1, device=device)

    def targets(self, logits, labels, inputs):
        z_t = self.scale * logits.mean(0)
        return Targets((z_t / self.temperature).log_softmax(-1)[None], self.mixing)
'''


def test_a_new_method_is_one_file_and_one_registry_entry(monkeypatch, tmp_path, tiny_root,
                                                         capsys):
    """The README's recipe: a Method subclass in a module of its own, and one Entry (with its
    hyper-parameter as an Option) added to registry.METHODS, nothing else; then a tiny
    pre-training run with it from the command line."""
    (tmp_path / "scaled_method.py").write_text(METHOD_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    scale = registry.Option("scale", float, 1.0, "the factor of the mean logit")
    entry = registry.Entry("scaled", "scaled_method:Scaled", "Scaled", min_students=2,
                           options=(scale,))
    monkeypatch.setattr(registry, "METHODS", (*registry.METHODS, entry))

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "scaled: the factor of the mean logit" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="method.scale is only used by method scaled, not "
                                          "kdcl_minlogit"):
        config.load(SMOKE / "kdcl_minlogit.yaml", ["method.scale=0.5"])
    with pytest.raises(ConfigError, match="scaled trains students together: list at least 2"):
        config.load(SMOKE / "kdcl_minlogit.yaml", ["method.name=scaled",
                                                   "students=[{arch: resnet18}]"])

    argv = [str(SMOKE / "kdcl_minlogit.yaml"), *tiny_overrides(tiny_root, tmp_path),
            "method.name=scaled", "method.scale=0.5", "name=extension/scaled"]
    assert cli.main(argv) == 0
    records = read_records(tmp_path)
    assert [(r["method"], r["student"]) for r in records] == [
        ("scaled", "resnet18"), ("scaled", "mobilenet_v2_x0.5")]
    run_dir = tmp_path / "runs" / "extension" / "scaled" / "seed0"
    saved = json.loads((run_dir / "run.json").read_text())["config"]["method"]
    assert saved["name"] == "scaled" and saved["scale"] == 0.5
    cfg = config.load(SMOKE / "kdcl_minlogit.yaml", ["method.name=scaled", "method.scale=0.5"])
    method = methods.build(cfg.method, 2, torch.device("cpu"), 5, (0.5,) * 3, (0.25,) * 3, None)
    logits = torch.randn(2, 3, 5)
    expected = (0.5 * logits.mean(0) / cfg.method.temperature).log_softmax(-1)
    torch.testing.assert_close(method.targets(logits, None, []).log_probs[0], expected)
