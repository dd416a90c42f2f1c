"""`python -m bench bench-shapes` on a tiny stand-in shape (the real widths take minutes per shape on a CPU)."""

import json

import pytest
import torch

from bench import shapes_bench
from bench.cli import main
from ee_diffusion.testing import tiny_dit

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny():
    model = tiny_dit(num_layers=4, sample_size=8, in_channels=1)

    def inputs(t):
        return {"hidden_states": torch.randn(t.shape[0], 1, 8, 8), "timestep": t,
                "class_labels": torch.arange(t.shape[0]) % 10}

    return model, inputs


@pytest.mark.slow
def test_bench_shapes_writes_every_method_and_the_table_from_its_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(shapes_bench.SHAPES, "tiny", _tiny)
    assert main(["bench-shapes", "--shapes", "tiny", "--batches", "1", "4", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "shapes.json").read_text())
    assert (tmp_path / "shapes.md").read_text() == shapes_bench.markdown(report)
    assert report["command"] == ("python -m bench bench-shapes --shapes tiny --batches 1 4 --repeats 1 --warmup 0 "
                                 f"--threads 1 --out {tmp_path}")
    small, big = report["shapes"]["tiny"]["batches"]["1"], report["shapes"]["tiny"]["batches"]["4"]
    assert "compaction_ratio" not in small["derived"] and "compaction_ratio" in big["derived"]
    assert set(big["results"]) == {"full", "hooks_off", "heads_no_exit", "static_half", "half_rows_exit",
                                   "ase_t100", "ase_t300", "ase_t500", "ase_t700", "ase_t900"}
    # The ASE ideal for 4 blocks: depths 4, 3, 3, 2, 2 (the released 28/24/20/16/12 scaled) -> 14 / 20.
    assert big["derived"]["ase_ideal"] == pytest.approx(0.7)
    assert "quality is not measured" in capsys.readouterr().out


def test_bad_counts_are_refused_before_any_model_is_built(tmp_path, capsys):
    assert main(["bench-shapes", "--batches", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bench-shapes: error: --threads, --repeats and --batches must be >= 1" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
