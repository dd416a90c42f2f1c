"""Every measured table in docs/ is rendered from a committed JSON by the package's code (the shipped models'
TRAINING.md and the full bench reports: tests/test_shipped_operating_points.py)."""

import json
from pathlib import Path

import pytest

from bench import backbones_bench, caches_report, compile_bench, presets, shapes_bench, unet_vs_dit
from ee_diffusion.calibration.operating_point_result import search_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs"
RENDERED = [
    ("bench-caches-digits-deep/report.json", "bench-caches-digits-deep/report.md", caches_report.markdown),
    *((f"bench-caches-{p}/report.json", f"bench-caches-{p}/report.md", caches_report.markdown)
      for p in ("dpmpp10", "dpmpp15", "dpmpp20", "ddim25", "cachedit10", "cachedit15")),
    ("bench-compile-digits-deep/compile.json", "bench-compile-digits-deep/compile.md", compile_bench.markdown),
    ("operating-point-search-digits/search.json", "operating-point-search-digits/search.md", search_markdown),
    ("unet-vs-dit/results.json", "unet-vs-dit/table.md", unet_vs_dit.markdown_table),
    ("backbones-cost/backbones.json", "backbones-cost/backbones.md", backbones_bench.markdown),
    ("bench-ci-digits/report.json", "bench-ci-digits/report.md", presets.markdown),
    ("bench-shapes/dit-xl-2/shapes.json", "bench-shapes/dit-xl-2/shapes.md", shapes_bench.markdown),
    ("bench-shapes/pixart-alpha-512/shapes.json", "bench-shapes/pixart-alpha-512/shapes.md", shapes_bench.markdown),
]


@pytest.mark.parametrize("data, table, render", RENDERED, ids=[r[1] for r in RENDERED])
def test_the_committed_table_is_what_the_code_renders_from_the_committed_json(data, table, render):
    report = json.loads((DOCS / data).read_text())
    assert (DOCS / table).read_text() == render(report)
    assert report.get("command") or report.get("args") or report.get("settings", {}).get("command"), \
        "every committed run records its command"


def test_every_docs_table_links_to_a_rendered_file():
    # The measured tables that used to be typed into these pages now live in rendered files they link to.
    for page, link in (("tail_cache.md", "bench-caches-digits-deep/report.md"),
                       *(("tail_cache.md", f"bench-caches-{p}/report.md") for p in ("dpmpp10", "dpmpp15", "dpmpp20", "ddim25")),
                       ("backbones.md", "backbones-cost/backbones.md"),
                       ("backbones.md", "unet-vs-dit/table.md"), ("evaluation.md", "bench-full-digits/report.md")):
        assert link in (DOCS / page).read_text(), (page, link)


@pytest.mark.slow
def test_the_backbones_bench_writes_its_json_and_the_table_rendered_from_it(tmp_path):
    assert backbones_bench.main(["--backbones", "DiT", "UNet2DModel", "--repeats", "1", "--steps", "2", "--batch", "2",
                                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "backbones.json").read_text())
    assert [r["backbone"] for r in report["results"]] == ["DiT", "UNet2DModel"]
    assert report["command"].startswith("python -m bench.backbones_bench --backbones DiT")
    assert (tmp_path / "backbones.md").read_text() == backbones_bench.markdown(report)
    assert all(0 < r["block_fraction"] < 1 for r in report["results"])
