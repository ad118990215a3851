"""The README's recipe for a transfer backend, followed literally: a package with a `Backend`
subclass and its weight rules, and one `BackendEntry` in transfer/backends/__init__.py, nothing
else. The chain then plans it (plan.build, the dry run), `python -m transfer` runs a config of it
through the lifecycle, and its record appears in the transfer table beside the others'."""
import json

import pytest

from chain import __main__ as chain_main
from chain import plan
from transfer import backends, cli

from .conftest import make_backbone, read_records

PACKAGE = '''
"""A backend whose "framework" scores a fixed AP: the lifecycle's contract, nothing more."""
import json
from pathlib import Path

from kdcl_common import ConfigError
from kdcl_common.config import parse_overrides
from transfer.backends.base import Backend as Base
from transfer.backends.base import Prepared, Spec
from transfer.naming import config_name


class Backend(Base):
    name = "fakedet"

    def load_config(self, path, overrides):
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        cfg = json.loads(Path(path).read_text())
        cfg.update(dict(parse_overrides(list(overrides))))
        return cfg

    def fit_backbone(self, cfg, meta, path):
        return {**cfg, "arch": meta["architecture"]}

    def spec(self, cfg, path):
        return Spec(name=config_name(path), seed=cfg["seed"], output_root=cfg["output_root"],
                    records=cfg["records"], preset="smoke", protocol="smoke", task="detection",
                    dataset="synthetic", config=cfg, config_text=json.dumps(cfg),
                    config_file="config.json", extra={"detector": "fake_rcnn"},
                    location_keys=("output_root", "records"))

    def prepare(self, cfg, run):
        from transfer import convert

        converted = convert.convert(run.backbone_state, run.meta["architecture"], "fakedet")
        return Prepared(cfg, 3, converted)

    def train(self, prepared, run):
        if run.ctx.is_main:
            run.finish({"bbox_AP": 12.5, "bbox_AP50": 30.0}, 3, 1, 0.5, None)

    def evaluate(self, prepared, run):
        run.finish_evaluation({"bbox_AP": 12.5}, 3, "none")

    def has_checkpoint(self, run_dir):
        return False
'''
WEIGHTS = '''
from transfer.convert import drop

RULES = {"resnet": drop("fc."), "mobilenet_v2": drop("classifier.")}
'''


@pytest.fixture
def fake_backend(tmp_path, monkeypatch):
    package = tmp_path / "fakedet"
    package.mkdir()
    (package / "__init__.py").write_text(PACKAGE)
    (package / "weights.py").write_text(WEIGHTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = backends.BackendEntry(
        "fakedet", "fakedet", "json", backends.COCO,
        configs={"smoke": ("fake_{arch}.json",), "paper": ("fake_{arch}_paper.json",)},
        arch_tags={"resnet18": "r18", "mobilenet_v2": "mbv2"})
    monkeypatch.setattr(backends, "REGISTRY", (*backends.REGISTRY, entry))
    return entry


def test_the_chain_plans_a_new_backend_from_its_entry(fake_backend, tmp_path, capsys):
    steps = plan.build("smoke", [0], ["fakedet"])
    transfers = [s for s in steps if s.stage == "transfer"]
    assert transfers and {s.backend for s in transfers} == {"fakedet"}
    assert {s.args[1] for s in transfers} <= {"transfer/configs/fakedet/fake_r18.json",
                                              "transfer/configs/fakedet/fake_mbv2.json"}
    assert all(step.after for step in transfers)  # each waits for the export it fine-tunes
    paper = plan.build("paper", [0], ["fakedet"])
    assert {s.args[1] for s in paper if s.stage == "transfer"} >= {
        "transfer/configs/fakedet/fake_r18_paper.json"}
    assert all(s.needs == ("COCO_ROOT",) for s in paper if s.stage == "transfer")

    layout = ["--runs", str(tmp_path / "runs"), "--records", str(tmp_path / "records"),
              "--results", str(tmp_path / "results")]
    assert chain_main.main(["--dry-run", "--backends", "fakedet", *layout]) == 0
    out = capsys.readouterr().out
    assert "backends fakedet" in out
    assert "transfer/configs/fakedet/fake_r18.json" in out


def test_python_m_transfer_runs_a_config_of_the_new_backend(fake_backend, tmp_path):
    config = tmp_path / "fake_r18.json"
    config.write_text(json.dumps({"seed": 0, "output_root": str(tmp_path / "runs"),
                                  "records": str(tmp_path / "records")}))
    backbone = make_backbone(tmp_path, "resnet18")
    assert cli.main([str(config), "--backend", "fakedet", "--backbone", str(backbone)]) == 0
    (record,) = read_records(tmp_path)
    assert (record["backend"], record["detector"], record["metrics"]["bbox_AP"]) == (
        "fakedet", "fake_rcnn", 12.5)
    # the same command again: a finished run, refused without --resume
    assert cli.main([str(config), "--backend", "fakedet", "--backbone", str(backbone)]) == 2

    from results import collect, tabulate

    frame = collect.load([tmp_path / "records"])
    (table,) = tabulate.transfer_tables(frame, tabulate.load_paper())
    assert "fakedet fake_rcnn" in set(table.data.columns.get_level_values(0))
