"""torch.compile and torch.export of a hooked model (CPU, aot_eager backend).

With a declared batch layout and a planned policy (StaticDepth, TimestepSchedule) the whole call is one graph:
per-row plans run masked (no host sync), uniform depths stop early. Dynamic policies break the graph once per
decision block (the count of the exiting rows) and work with fullgraph=False. CachedTailResidual (any forecast
order) is dynamic: its rows decide from their state, so it has no plan; it decides at one block, so its breaks
do not grow with the number of blocks.
"""

from __future__ import annotations

import functools

import pytest
import torch
from _interop import PER_ROW, T, X, Y, run

from ee_diffusion import EarlyExitConfig, UncertaintyHeads, apply_early_exit, remove_early_exit, reset_exit_state
from ee_diffusion.hooks import get_exit_stats
from ee_diffusion.layout import BatchLayout
from ee_diffusion.schedules import CachedTailResidual, StaticDepth, TimestepSchedule, UncertaintyThreshold
from ee_diffusion.testing import random_bridges, tiny_dit, tiny_sd3, tiny_unet

# torch.compile traces take seconds each: the whole file is in the slow set (`make test` runs it).
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

PLANNED = {
    "per_row": PER_ROW,
    "static": StaticDepth(2),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(PLANNED))
@pytest.mark.parametrize("paired", [False, True], ids=["no_pairs", "cfg_pairs"])
def test_compile_fullgraph_matches_eager(name, paired):
    model = tiny_dit(num_layers=4)
    x, t, y = (torch.cat([X, X]), torch.cat([T, T]), torch.cat([Y, torch.full_like(Y, 10)])) if paired else (X, T, Y)
    apply_early_exit(model, EarlyExitConfig(policy=PLANNED[name]), layout=BatchLayout(guidance_pairs=paired))
    eager = run(model, x, t, y)
    eager_depths = get_exit_stats(model).blocks_run[0]
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(run(compiled, x, t, y), eager)
    assert torch.equal(get_exit_stats(model).blocks_run[0], eager_depths)  # statistics recorded as in eager
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x, timestep=t, class_labels=y, return_dict=False)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("name", list(PLANNED))
def test_export_matches_eager(name):
    model = tiny_dit(num_layers=4)
    apply_early_exit(model, EarlyExitConfig(policy=PLANNED[name]), layout=BatchLayout())
    eager = run(model)
    program = torch.export.export(model, (X,), {"timestep": T, "class_labels": Y, "return_dict": False})
    torch.testing.assert_close(program.module()(X, timestep=T, class_labels=Y, return_dict=False)[0], eager)
    # the exported program decides from the timesteps it is given, not the ones it was traced with
    t = torch.tensor([900, 100, 700, 300])
    torch.testing.assert_close(program.module()(X, timestep=t, class_labels=Y, return_dict=False)[0], run(model, t=t))


def test_uniform_depth_compiles_to_a_shorter_graph():
    model = tiny_dit(num_layers=4)
    apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(1)), layout=BatchLayout())
    seen = []
    for block in model.transformer_blocks:
        block.attn1.register_forward_pre_hook(lambda module, args: seen.append(1))
    torch.compile(model, fullgraph=True, backend="aot_eager")(X, timestep=T, class_labels=Y)
    assert len(seen) == 1  # traced once: only block 0's attention is in the graph


def test_dynamic_policy_breaks_once_per_decision_block():
    model = tiny_dit(num_layers=3)
    heads = UncertaintyHeads.from_model(model)
    apply_early_exit(model, EarlyExitConfig(policy=UncertaintyThreshold(0.5)), heads=heads, layout=BatchLayout())
    eager = run(model)
    torch._dynamo.utils.counters.clear()
    torch.testing.assert_close(run(torch.compile(model, backend="aot_eager")), eager)
    breaks = torch._dynamo.utils.counters["graph_break"]
    # Only the exit decision's host sync (`int(mask.sum())`, one per decision block) breaks the graph; dynamo
    # counts that one break once per frame it splits (model, block call, hook, engine).
    assert breaks and all("Tensor.item()" in reason for reason in breaks), dict(breaks)


def test_tail_cache_breaks_do_not_grow_with_depth():
    """CachedTailResidual (forecast order 2) under torch.compile equals eager over a full call and a skipping
    one; it breaks the graph only at the engine's count of the skipping rows after its one decision block
    (dynamo counts that break once per frame it splits), so 3 and 6 blocks give the same breaks and graphs."""
    counts = {}
    for num_layers in (3, 6):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        model = tiny_dit(num_layers=num_layers)
        policy = CachedTailResidual(threshold=1e9, forecast_order=2)  # a row skips whenever it may
        apply_early_exit(model, EarlyExitConfig(policy=policy), layout=BatchLayout())
        steps = (T, T - 40)  # every row: full, then skip
        eager = [run(model, t=t) for t in steps]
        reset_exit_state(model)
        compiled = torch.compile(model, backend="aot_eager")
        for t, expected in zip(steps, eager):
            torch.testing.assert_close(run(compiled, t=t), expected)
        assert get_exit_stats(model).blocks_run[0].tolist() == [1] * 4
        counters = torch._dynamo.utils.counters
        breaks = counters["graph_break"]
        assert breaks and all("Tensor.item()" in reason for reason in breaks), dict(breaks)
        counts[num_layers] = (sum(breaks.values()), counters["stats"]["unique_graphs"])
    assert counts[3] == counts[6], counts


def test_no_policy_compiles_fullgraph_and_equals_stock():
    model = tiny_dit(num_layers=4)
    stock = run(model)
    apply_early_exit(model)
    torch.testing.assert_close(run(torch.compile(model, fullgraph=True, backend="aot_eager")), stock)


def test_sd3_per_row_plan_compiles_fullgraph():
    model = tiny_sd3(num_layers=4)
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(4, 4, 8, 8, generator=g), timestep=T, return_dict=False,
                  encoder_hidden_states=torch.randn(4, 5, 16, generator=g),
                  pooled_projections=torch.randn(4, 8, generator=g))
    apply_early_exit(model, EarlyExitConfig(policy=PLANNED["per_row"]), layout=BatchLayout())
    with torch.no_grad():
        eager = model(**inputs)[0]
        torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="aot_eager")(**inputs)[0], eager)


@pytest.mark.parametrize("policy, fullgraph", [(StaticDepth(1), True), (TimestepSchedule([500], [2, 1]), False)],
                         ids=["uniform_fullgraph", "per_row_breaks_at_plan"])
def test_unet_compiles(policy, fullgraph):
    """U-Nets: a uniform depth is one graph; a per-row plan breaks the graph once, at its host copy."""
    model = tiny_unet()
    apply_early_exit(model, EarlyExitConfig(policy=policy), bridges=random_bridges(model), layout=BatchLayout())
    x = torch.randn(2, model.config.in_channels, model.config.sample_size, model.config.sample_size)
    t = torch.tensor([100, 900])
    with torch.no_grad():
        eager = model(x, t).sample
        torch.testing.assert_close(torch.compile(model, fullgraph=fullgraph, backend="aot_eager")(x, t).sample, eager)


def test_pass_through_left_under_a_wrapper_compiles_fullgraph():
    """A hook that removal left as a pass-through (an unknown wrapper stacked on it) is one graph with the stock
    model's numbers."""
    model = tiny_dit(num_layers=4)
    stock = run(model)
    apply_early_exit(model, EarlyExitConfig(policy=PER_ROW), layout=BatchLayout())
    inner = model.forward
    model.forward = functools.wraps(inner)(lambda *args, **kwargs: inner(*args, **kwargs))
    remove_early_exit(model)
    assert inner.released
    torch.testing.assert_close(run(torch.compile(model, fullgraph=True, backend="aot_eager")), stock)
