"""Config loading: inheritance, overrides, and errors that say how to fix them."""
import pytest

from kdcl_common import ConfigError
from kdcl_common.config import config_diff, read_yaml
from pretrain import cli, config

from .conftest import SMOKE


def test_smoke_config_inherits_its_base():
    cfg = config.load(SMOKE / "kdcl_linear.yaml")
    assert cfg.name == "smoke/kdcl_linear"
    assert cfg.method.name == "kdcl_linear" and cfg.preset == "smoke"
    assert [s.arch for s in cfg.students] == ["resnet18", "mobilenet_v2"]


def test_overrides_are_typed_and_reach_list_items():
    cfg = config.load(SMOKE / "kdcl_linear.yaml",
                      ["optim.lr=0.5", "optim.milestones=[1,2]", "students.0.arch=resnet34",
                       "students.1.kwargs.width_mult=1.0", "method.icl=false"])
    assert cfg.optim.lr == 0.5 and cfg.optim.milestones == [1, 2]
    assert cfg.students[0].arch == "resnet34" and cfg.students[1].kwargs == {"width_mult": 1.0}
    assert cfg.method.icl is False


@pytest.mark.parametrize("override,hint", [
    ("optim.lrr=0.1", "Did you mean 'optim.lr'"),
    ("methd.name=dml", "Did you mean 'method'"),
    ("students.0.achr=resnet18", "Did you mean 'students.0.arch'"),
])
def test_unknown_override_names_the_nearest_key(override, hint):
    with pytest.raises(ConfigError, match=hint):
        config.load(SMOKE / "independent.yaml", [override])


def test_unknown_yaml_key_names_the_nearest_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {SMOKE / '_base.yaml'}\noptim: {{weight_decy: 0.1}}\n")
    with pytest.raises(ConfigError, match="optim.weight_decy.*Did you mean 'optim.weight_decay'"):
        config.load(bad)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown architecture 'resnet19'.*resnet18.*wrn_16_2"):
        config.load(SMOKE / "independent.yaml", ["students.0.arch=resnet19"])


def test_unknown_method_and_bad_values():
    with pytest.raises(ConfigError, match="method.name='kdcl_fancy' is not one of"):
        config.load(SMOKE / "independent.yaml", ["method.name=kdcl_fancy"])
    with pytest.raises(ConfigError, match="optim.lr"):
        config.load(SMOKE / "independent.yaml", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="key=value"):
        config.load(SMOKE / "independent.yaml", ["optim.lr"])


def test_missing_environment_variable_says_what_to_export(tmp_path, monkeypatch):
    monkeypatch.delenv("KDCL_TEST_ROOT", raising=False)
    cfg = tmp_path / "env.yaml"
    cfg.write_text(f"_base_: {SMOKE / '_base.yaml'}\n"
                   "data: {root: '${oc.env:KDCL_TEST_ROOT}'}\n")
    with pytest.raises(ConfigError, match="export KDCL_TEST_ROOT=.*data.root="):
        config.load(cfg)
    monkeypatch.setenv("KDCL_TEST_ROOT", str(tmp_path / "x"))
    assert config.load(cfg).data.root == str(tmp_path / "x")


def test_circular_base_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        read_yaml(tmp_path / "a.yaml")


def test_method_specific_checks():
    with pytest.raises(ConfigError, match="kd needs method.teacher"):
        config.load(SMOKE / "independent.yaml", ["method.name=kd"])
    with pytest.raises(ConfigError, match="at least 2"):
        config.load(SMOKE / "kdcl_minlogit.yaml", ["students=[{arch: resnet18}]"])


def test_config_diff_lists_changed_leaves():
    a = {"optim": {"lr": 0.1, "milestones": [1, 2]}, "students": [{"arch": "resnet18"}]}
    b = {"optim": {"lr": 0.2, "milestones": [1, 2]}, "students": [{"arch": "resnet34"}]}
    assert config_diff(a, b) == ["  optim.lr: 0.1 -> 0.2",
                                 "  students.0.arch: 'resnet18' -> 'resnet34'"]


def test_every_shipped_config_loads(monkeypatch, tmp_path):
    for var in ("IMAGENET_ROOT", "CIFAR100_ROOT"):
        monkeypatch.setenv(var, str(tmp_path / "placeholder"))
    configs = sorted(p for p in config.CONFIG_ROOT.rglob("*.yaml") if not p.name.startswith("_"))
    assert len(configs) >= 9
    for path in configs:
        cfg = config.load(path)
        assert cfg.students and cfg.preset in ("smoke", "cifar", "paper", "custom"), path
        assert (cfg.preset == "custom") == (path.parent.name in ("bench", "acceptance")), path


def test_yaml_reads_only_true_and_false_as_booleans():
    from kdcl_common.config import load_yaml, parse_overrides

    # YAML 1.1 would read off/on/yes/no as booleans and break `train.amp: off`
    assert load_yaml("a: off\nb: yes\nc: true\nd: False") == {"a": "off", "b": "yes", "c": True,
                                                             "d": False}
    assert parse_overrides(["train.amp=off", "x=true", "lr=1.0e-4"]) == [
        ("train.amp", "off"), ("x", True), ("lr", 1e-4)]


def test_yaml_reads_floats_without_a_dot():
    """YAML 1.1 reads `1e-3` as a string; mmseg's typed overrides then refused lr=1e-3."""
    from kdcl_common.config import load_yaml, parse_overrides

    assert load_yaml("a: 1e-3\nb: -2E+5\nc: 1e30\nd: 10\ne: 1_000\nf: 1e\ng: e5") == {
        "a": 0.001, "b": -2e5, "c": 1e30, "d": 10, "e": 1000, "f": "1e", "g": "e5"}
    assert parse_overrides(["optim_wrapper.optimizer.lr=1e-3"]) == [
        ("optim_wrapper.optimizer.lr", 0.001)]


@pytest.mark.parametrize("overrides,message", [
    (["optim.lr=-1"], "optim.lr=-1.0 must be > 0"),
    (["optim.lr=0"], "optim.lr=0.0 must be > 0"),
    (["optim.momentum=1"], "optim.momentum=1.0 must be in [0, 1)"),
    (["optim.momentum=-0.5"], "optim.momentum=-0.5 must be in [0, 1)"),
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov=true needs momentum"),
    (["optim.weight_decay=-1e-4"], "optim.weight_decay=-0.0001 must be >= 0"),
    (["optim.warmup_epochs=-1"], "optim.warmup_epochs=-1.0 must be >= 0"),
    (["optim.warmup_start_lr=-0.1"], "optim.warmup_start_lr=-0.1 must be >= 0"),
    (["optim.min_lr=-1"], "optim.min_lr=-1.0 must be >= 0"),
    (["optim.gamma=0"], "optim.gamma=0.0 must be > 0"),
    (["optim.milestones=[-1,2]"], "optim.milestones=[-1, 2] must be epochs >= 0"),
    (["optim.milestones=[2,1]"], "optim.milestones must be increasing, got [2, 1]"),
    (["optim.batch_size=0"], "optim.batch_size and optim.epochs must be positive"),
    (["data.workers=-1"], "data.workers=-1 must be >= 0"),
    (["data.image_size=0"], "data.image_size=0 must be > 0"),
    (["data.image_size=224", "data.eval_resize=200"],
     "data.eval_resize=200 must be >= data.image_size=224"),
    (["data.held_out_per_class=-1"], "data.held_out_per_class=-1 must be >= 0"),
    (["data.max_corrupt_fraction=1"], "data.max_corrupt_fraction=1.0 must be in [0, 1)"),
    (["data.max_corrupt_fraction=-0.1"], "data.max_corrupt_fraction=-0.1 must be in [0, 1)"),
    (["data.max_image_pixels=0"], "data.max_image_pixels=0 must be a number of pixels in [1, "
                                  "178,956,970] (default 89,478,485; PIL refuses larger images "
                                  "itself)"),
    (["data.color_jitter=-0.4"], "data.color_jitter=-0.4 must be >= 0"),
    (["data.synthetic.classes=0"], "data.synthetic.classes=0 must be > 0"),
    (["data.synthetic.train_per_class=-5"], "data.synthetic.train_per_class=-5 must be > 0"),
    (["data.synthetic.val_per_class=0"], "data.synthetic.val_per_class=0 must be > 0"),
    (["data.synthetic.image_size=0"], "data.synthetic.image_size=0 must be > 0"),
    (["method.kd_weight=-1"], "method.kd_weight=-1.0 must be >= 0"),
    (["train.log_interval=0"], "train.log_interval=0 must be > 0"),
    (["method.temperature=0"], "method.temperature must be > 0, got 0.0"),
    (["seed=-1"], "seed=-1 must be >= 0"),
    (["name=../../elsewhere"], "name='../../elsewhere' must be a relative path that stays inside"),
    (["name=/tmp/x"], "name='/tmp/x' must be a relative path"),
    (["students.0.name=../r18"], "students.0.name='../r18' must be a plain file name"),
])
def test_nonsense_numbers_stop_with_the_key_and_the_rule(overrides, message, capsys):
    """Exit code 2 and one line naming the key, its value and what it must be; no traceback."""
    argv = [str(SMOKE / "independent.yaml"), "data.root=/nowhere", *overrides]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_typo_in_student_kwargs_stops_print_config_with_the_nearest_argument(capsys):
    base = [str(SMOKE / "kdcl_minlogit.yaml"), "data.root=/nowhere", "--print-config"]
    assert cli.main(base + ["students.1.kwargs={widht_mult: 0.5}"]) == 2
    out, err = capsys.readouterr()
    assert not out and err.startswith("error: students.1.kwargs.widht_mult: "
                                      "torchvision.models.mobilenet_v2 has no argument "
                                      "'widht_mult' (did you mean 'width_mult'?)")
    assert cli.main(base + ["students.0.arch=wrn_16_2", "students.0.kwargs={nrom: gn}"]) == 2
    assert "students.0.kwargs.nrom: kdcl_common.models.cifar.wrn_16_2 has no argument 'nrom' " \
           "(did you mean 'norm'?)" in capsys.readouterr().err


def test_student_kwargs_are_checked_against_the_constructor(capsys):
    base = [str(SMOKE / "kdcl_minlogit.yaml"), "data.root=/nowhere", "--print-config"]
    assert cli.main(base + ["students.1.kwargs={width_mult: 0.75}"]) == 0
    assert "width_mult: 0.75" in capsys.readouterr().out
    assert cli.main(base + ["students.1.kwargs={width_mult: 0.5, dropout: 2.0}"]) == 2
    assert ("students.1.kwargs: torchvision.models.mobilenet_v2(width_mult=0.5, dropout=2.0) "
            "fails: dropout probability has to be between 0 and 1") in capsys.readouterr().err
    assert cli.main(base + ["students.0.arch=cifar_resnet20", "students.0.kwargs={norm: xx}"]) == 2
    assert "unknown norm 'xx'" in capsys.readouterr().err
    assert cli.main(base + ["students.1.kwargs={num_classes: 5}"]) == 2
    assert "students.1.kwargs.num_classes: the number of classes comes from the dataset" in \
        capsys.readouterr().err


def test_student_kwargs_are_checked_on_the_meta_device(monkeypatch):
    """The check builds every student without allocating its weights."""
    from kdcl_common import models

    built, build = [], models.build

    def spy(arch, **kwargs):
        module = build(arch, **kwargs)
        built.append((arch, kwargs, {p.device.type for p in module.parameters()}))
        return module

    monkeypatch.setattr(models, "build", spy)
    config.load(SMOKE / "kdcl_minlogit.yaml", ["data.root=/nowhere",
                                                "students.0.arch=resnet101"])
    assert built == [("resnet101", {"num_classes": 10}, {"meta"}),  # the smoke set's classes
                     ("mobilenet_v2", {"num_classes": 10, "width_mult": 0.5}, {"meta"})]


def test_a_key_added_since_a_run_was_saved_is_the_same_run_at_its_default():
    from kdcl_common.config import config_diff
    from pretrain.config import RUNS

    saved = {"data": {"root": "x"}, "method": {"name": "kdcl_minlogit"}}  # before data.cutout
    now = {"data": {"root": "x", "cutout": False, "cutout_size": None},
           "method": {"name": "kdcl_minlogit", "ce_weight": 1.0, "splits": []}}
    assert config_diff(saved, now, defaults=RUNS.defaults) == []
    changed = {**now, "data": {**now["data"], "cutout": True}}
    assert (config_diff(saved, changed, defaults=RUNS.defaults)
            == ["  data.cutout: '<absent>' -> True"])
    assert config_diff(now, saved, defaults=RUNS.defaults)  # a key removed is a difference


def alias_tree(levels: int = 9, width: int = 9) -> str:
    """A YAML list of `levels` nested anchors, each aliasing the last `width` times: a few
    hundred characters that stand for width**levels values (the 'billion laughs')."""
    nodes = ["&a0 [" + ",".join(["1"] * width) + "]"]
    nodes += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "[" + ",".join(nodes) + "]"


@pytest.mark.parametrize("key", ["optim.milestones", "name", "students.0.kwargs"])
def test_an_alias_in_an_override_is_refused(key, capsys):
    argv = [str(SMOKE / "independent.yaml"), f"{key}={alias_tree(levels=2)}", "--print-config"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert not out and err.startswith(f"error: override '{key}=[&a0 [1,1,1,1,1,1,1,1,1],&a1 ")
    assert "holds a YAML anchor or alias (&name, *name), which an override may not use: write " \
           "the value out in full" in err and "Traceback" not in err


@pytest.mark.timeout(60)
def test_an_alias_tree_in_a_config_file_stops_before_it_expands(tmp_path, capsys):
    """9**9 values in six lines: refused from the parsed document, which holds each anchor
    once, before OmegaConf or the dump would copy them out (that took gigabytes)."""
    import tracemalloc

    path = tmp_path / "laughs.yaml"
    path.write_text(f"_base_: {SMOKE / 'independent.yaml'}\noptim:\n  milestones: "
                    f"{alias_tree()}\n")
    tracemalloc.start()
    try:
        assert cli.main([str(path), "--print-config"]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20
    out, err = capsys.readouterr()
    assert not out and err == (f"error: {path}, line 3, has YAML aliases (*name) that expand to "
                               f"more than 100,000 values, where a config holds a few hundred: "
                               f"write the values out, or alias fewer of them\n")


def test_a_config_nested_2000_levels_deep_is_refused(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text(f"_base_: {SMOKE / 'independent.yaml'}\nstudents:\n- arch: resnet18\n"
                    f"  kwargs: {'{a: ' * 2000}1{'}' * 2000}\n")
    assert cli.main([str(path), "--print-config"]) == 2
    assert capsys.readouterr().err == (f"error: {path}, line 4, is nested more than 50 levels "
                                       f"deep, where a config nests a few: is it the right "
                                       f"file?\n")


def test_a_base_that_names_no_file_is_refused(tmp_path, capsys):
    path = tmp_path / "base.yaml"
    path.write_text("_base_: [3]\n")
    assert cli.main([str(path), "--print-config"]) == 2
    assert capsys.readouterr().err == (f"error: {path}: _base_: [3] must name a config file or "
                                       f"a list of them, as paths relative to {tmp_path} (e.g. "
                                       f"_base_: _base.yaml, or _base_: [a.yaml, b.yaml])\n")


def test_a_binary_file_given_as_the_config_is_refused(tmp_path, capsys):
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(b"PK\x03\x04\x00\x00\x08\x08\x00\x00\x9c\xff" * 50)  # a torch.save zip
    assert cli.main([str(path)]) == 2
    assert capsys.readouterr().err == (f"error: {path} is not a text file (byte 10 is not "
                                       f"UTF-8): a config is a YAML text file; was a "
                                       f"checkpoint, image or archive given in its place?\n")
