"""`python -m bench`, run in-process at toy sizes: what its commands write and print."""

import json

import pytest

from bench.cli import SETTING_NAMES, main
from bench.models import SETTINGS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_bench_engine_writes_its_json_and_table(tmp_path, capsys):
    assert main(["bench-engine", "--out", str(tmp_path), "--repeats", "1", "--batch-size", "4"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine_bench.json", "engine_bench.md"]
    report = json.loads((tmp_path / "engine_bench.json").read_text())
    methods = ["full", "hooks_off", "heads_no_exit", "half_exit_planned", "half_exit_dynamic", "static_depth_2"]
    assert list(report["results"]) == methods
    for name, row in report["results"].items():
        assert set(row) == {"median_s", "min_s", "ratio_to_reference"}, name
        assert row["median_s"] > 0 and row["ratio_to_reference"] > 0
    assert report["results"]["full"]["ratio_to_reference"] == 1.0
    setting = report["setting"]
    assert (setting["batch_size"], setting["repeats"], setting["num_layers"]) == (4, 1, 12)
    assert setting["ideal_half_exit_ratio"] == pytest.approx((2 + 0.5 * 10) / 12)
    table = (tmp_path / "engine_bench.md").read_text().splitlines()
    assert table[0] == "| method | median ms | ratio to full |"
    assert [line.split(" | ")[0].lstrip("| ") for line in table[2:]] == methods
    assert table[2] in capsys.readouterr().out


def test_cli_setting_names_are_the_benchmark_settings():
    assert SETTING_NAMES == tuple(SETTINGS)


def test_calibrate_takes_our_models_settings(tmp_path, capsys):
    """`--model glyphs` is a setting here (scored on its own real images), a folder name for `ee-diffusion`."""
    from ee_diffusion.cli import main as package_main

    argv = ["calibrate", "--model", "glyphs", "--kind", "operating-point", "--tolerance", "0.1", "--real",
            str(tmp_path), "--out", str(tmp_path / "search.json")]
    assert main(argv) == 2
    assert "the glyphs setting is scored against its own real images" in capsys.readouterr().err
    assert package_main(argv) == 2
    assert "--model 'glyphs' is neither a setting (digits) nor a pipeline folder" in capsys.readouterr().err
    assert not (tmp_path / "search.json").exists()
