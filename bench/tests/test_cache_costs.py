"""`bench.cache_costs` on tiny stand-ins: every method's calls are timed and labelled from the run's own statistics."""

from __future__ import annotations

import pytest

from bench import cache_costs
from ee_diffusion.testing import flux_inputs, tiny_flux, tiny_wan, wan_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


def _shape(build, make):
    def shape():
        model = build()

        def inputs(t, batch):
            x = make(model, batch=batch)
            x["timestep"] = x["timestep"].new_full((batch,), t / 1000 if x["timestep"].max() <= 1 else t)
            return x

        return model, inputs

    return shape


def test_the_calls_are_labelled_by_what_ran(tmp_path):
    shapes = {"flux": _shape(tiny_flux, flux_inputs), "wan": _shape(tiny_wan, wan_inputs)}
    for name in shapes:
        entry = cache_costs.bench_shape(name, batch=2, repeats=1, log=lambda line: None, shapes=shapes)
        methods = entry["methods"]
        # interval 4: call 1 computes; the tail runs fully on call 1, then skips up to 3 calls
        assert methods["forecast"]["kinds"] == ["compute", "forecast", "forecast", "forecast"]
        assert methods["tail"]["kinds"] == ["full", "skip", "skip", "skip"]
        # fixed_share is a ratio of two timings of tiny calls: only its sign is certain (on a loaded machine the
        # block-less call can take longer than the stock call)
        assert set(methods["hooks"]["ratio_to_stock"]) == {"full"} and entry["fixed_share"] > 0
    report = {"command": "x", "repeats": 1, "environment": {"torch": "t", "threads": 1, "machine": "m"},
              "shapes": {"flux": entry}}
    assert "| flux |" in cache_costs.markdown(report)
