"""Opt-in long runs (`bash tests/run.sh -m slow`, about 3 minutes on 2 cores): the smoke configs
exactly as shipped, which must learn the generated task well above chance (10 %)."""

import pytest

from pretrain import cli

from .conftest import SMOKE, read_records

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["independent", "kdcl_minlogit"])
def test_smoke_students_learn(tmp_path, method):
    out = [f"output_root={tmp_path / 'runs'}", f"records={tmp_path / 'records'}",
           f"data.root={tmp_path / 'data'}"]
    assert cli.main([str(SMOKE / f"{method}.yaml"), *out]) == 0
    records = read_records(tmp_path)
    assert len(records) == 2
    for record in records:
        assert record["metrics"]["top1"] > 30, record
