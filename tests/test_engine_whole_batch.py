"""`ModelFamily.whole_batch`: the engine hands every block's output back whole-batch (for models whose own loop works
on the streams between blocks, HunyuanDiT's kept skips and HiDream's per-block concatenations).

Here the declared families SD3 (a tuple-returning stack) and AuraFlow (a joint stack after it) run the whole property
suite again with `whole_batch=True`, and per-row exits must give exactly what the compacting engine gives, while
every block still computes only its running rows.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case, RowDepths, apply, count_block_computations, run

import ee_diffusion.adapters
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import get_exit_stats, remove_early_exit
from ee_diffusion.testing import auraflow_inputs, tiny_auraflow, tiny_sd3


def _make(name: str) -> Case:
    if name == "sd3":
        g = torch.Generator().manual_seed(1)
        inputs = {"hidden_states": torch.randn(4, 4, 8, 8, generator=g), "timestep": T.float(),
                  "encoder_hidden_states": torch.randn(4, 5, 16, generator=g),
                  "pooled_projections": torch.randn(4, 8, generator=g)}
        return Case(model=tiny_sd3(num_layers=4), inputs=inputs, num_blocks=4)
    model = tiny_auraflow(num_layers=2, num_single_layers=2)
    inputs = auraflow_inputs(model, batch=4)
    inputs["timestep"] = T.float() / 1000
    return Case(model=model, inputs=inputs, num_blocks=4)


@pytest.fixture
def whole_batch(monkeypatch):
    """Every declared family, declared whole-batch (the registry read by `get_adapter`)."""
    families = tuple(dataclasses.replace(f, whole_batch=True) for f in ee_diffusion.adapters.FAMILIES)
    monkeypatch.setattr(ee_diffusion.adapters, "FAMILIES", families)


@pytest.fixture(params=["sd3", "auraflow"])
def case(request, whole_batch):
    return _make(request.param)


@pytest.mark.parametrize("name", ["sd3", "auraflow"])
@pytest.mark.parametrize("depths", [[1, 2, 3, 4], [2, 2, 1, 1], [1, 1, 1, 1], [4, 3, 3, 1]])
def test_whole_batch_equals_the_compacting_engine_and_computes_the_same_rows(name, depths, monkeypatch):
    case = _make(name)
    apply(case, EarlyExitConfig(policy=RowDepths(depths)))
    with count_block_computations(case.model) as compacting_calls:
        compacted = run(case)
    remove_early_exit(case.model)
    families = tuple(dataclasses.replace(f, whole_batch=True) for f in ee_diffusion.adapters.FAMILIES)
    monkeypatch.setattr(ee_diffusion.adapters, "FAMILIES", families)
    apply(case, EarlyExitConfig(policy=RowDepths(depths)))
    with count_block_computations(case.model) as whole_calls:
        whole = run(case)
    assert get_exit_stats(case.model).blocks_run[0].tolist() == depths
    torch.testing.assert_close(whole, compacted, rtol=0, atol=0)
    # the same rows reach every block: the rows that left are really not computed
    assert whole_calls == compacting_calls


def test_the_model_loop_sees_every_row(whole_batch):
    """Each block's return value holds the whole batch once rows have left (what a model that keeps or concatenates
    the streams between blocks needs)."""
    case = _make("sd3")
    apply(case, EarlyExitConfig(policy=RowDepths([1, 2, 4, 4])))
    seen = []
    hooks = [block.register_forward_hook(lambda m, a, out: seen.append(out[1].shape[0]))
             for block in case.model.transformer_blocks]
    try:
        run(case)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [4, 4, 4, 4]
