"""torch.compile on every declared family (CPU, aot_eager), what the support table's compile column states.

Per family: per-row exits planned by a `TimestepSchedule` compile to one graph (`fullgraph=True`) and equal eager.
`BlockForecast` compiles (its per-row decisions break the graph once per call) and equals eager over a run of
compute and forecast calls, on three families that span the engine's paths (one stack; two stacks with tuple
returns; whole-batch): each takes 20-35 s of tracing on a CPU, too long for every family. Where the diffusers model itself does not trace whole (`MODEL_GRAPH_BREAKS`), the test
checks that the stock model fails `fullgraph=True` too, and that the hooked model compiles with breaks.
"""

from __future__ import annotations

import pytest
import torch
from test_family_caches import FAMILIES, RUN, make, model_timestep

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.families.support import MODEL_GRAPH_BREAKS
from ee_diffusion.hooks import apply_early_exit, reset_exit_state
from ee_diffusion.layout import BatchLayout
from ee_diffusion.schedules import BlockForecast, TimestepSchedule

# torch.compile traces take seconds each: the whole file is in the slow set (`make test` runs it).
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _timesteps(model, values) -> torch.Tensor:
    return torch.cat([model_timestep(model, t, 1) for t in values])


def test_every_family_is_here():
    from ee_diffusion.families import FAMILIES as DECLARED

    assert sorted(FAMILIES) == sorted(f.name for f in DECLARED)
    assert set(MODEL_GRAPH_BREAKS) <= set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_per_row_exits_compile(family):
    model, inputs = make(family)
    timestep = _timesteps(model, (900.0, 300.0))  # the two rows exit at different depths
    inputs[get_adapter(model).timestep_arg] = timestep  # `timestep`; HiDream's `timesteps`
    fullgraph = family not in MODEL_GRAPH_BREAKS
    if not fullgraph:
        with pytest.raises(Exception, match="data-dependent|graph break|Unsupported"), torch.no_grad():
            torch.compile(model, fullgraph=True, backend="aot_eager")(**inputs)
        torch._dynamo.reset()
    depth = get_adapter(model).num_blocks
    policy = TimestepSchedule([500], [depth, max(1, depth - 1)])
    apply_early_exit(model, EarlyExitConfig(policy=policy), layout=BatchLayout(guidance_pairs=False))
    with torch.no_grad():
        eager = model(**inputs).sample
        compiled = torch.compile(model, fullgraph=fullgraph, backend="aot_eager")(**inputs).sample
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["DiT", "Flux", "HunyuanDiT"])
def test_block_forecast_compiles(family):
    model, inputs = make(family)
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(interval=2, forecast_order=1)),
                     layout=BatchLayout(guidance_pairs=False))
    compiled = torch.compile(model, backend="aot_eager")
    outputs = {}
    for name, fn in (("eager", model), ("compiled", compiled)):
        reset_exit_state(model)
        with torch.no_grad():  # a run of 3 calls: computed, forecast, computed
            outputs[name] = [fn(**inputs, timestep=_timesteps(model, (t, t))).sample for t in RUN[:3]]
    for compiled_out, eager_out in zip(outputs["compiled"], outputs["eager"]):
        torch.testing.assert_close(compiled_out, eager_out, rtol=1e-4, atol=1e-5)
