"""The atomic writers of `ee_diffusion._io` that the tools write every report, network and figure through."""

import json

import pytest
import torch

from ee_diffusion._io import (
    atomic_path,
    atomic_save_figure,
    atomic_save_safetensors,
    atomic_write_json,
    atomic_write_text,
    load_safetensors,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half a rep")
            assert tmp.parent == tmp_path and tmp != target
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    atomic_write_json(target, {"fid": [1.5, float("nan")]}, indent=1)
    assert target.read_text().endswith("]\n}\n") and json.loads(target.read_text())["fid"][0] == 1.5


def test_safetensors_and_figures_are_written_whole(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tensors = {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.ones(2, dtype=torch.float16)}
    atomic_save_safetensors(tensors, tmp_path / "net.safetensors")
    loaded = load_safetensors(tmp_path / "net.safetensors", "test weights")
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], v) for k, v in tensors.items())

    figure, axis = plt.subplots()
    axis.plot([0, 1], [1, 0])
    atomic_save_figure(figure, tmp_path / "plot.png", dpi=20)
    atomic_save_figure(figure, tmp_path / "plot.pdf")  # the format follows the suffix, not the temporary name
    plt.close(figure)
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "plot.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.safetensors", "plot.pdf", "plot.png"]
