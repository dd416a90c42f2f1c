"""Copies of a hooked model: `copy.deepcopy` (of the model or of a pipeline holding it) gives a model whose hooks
act on its own modules; `copy.copy` shares the original's modules and says so; state dicts are unaffected."""

from __future__ import annotations

import copy

import pytest
import torch
from _interop import PER_ROW, T, X, Y, run
from diffusers import DDIMScheduler

from ee_diffusion import EarlyExitConfig, UncertaintyHeads, apply_early_exit, remove_early_exit
from ee_diffusion.hooks import _engine_of, get_exit_stats, is_early_exit_applied, record_exit_stats
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.schedules import StaticDepth, UncertaintyThreshold
from ee_diffusion.testing import random_bridges, tiny_dit, tiny_unet



def perturb(model):
    with torch.no_grad():
        for param in model.transformer_blocks[0].parameters():
            param.add_(0.5)


@pytest.mark.parametrize("with_heads", [False, True], ids=["schedule", "uncertainty"])
def test_deepcopy_hooks_act_on_the_copy(with_heads):
    model = tiny_dit(num_layers=4)
    heads = UncertaintyHeads.from_model(model) if with_heads else None
    policy = UncertaintyThreshold(0.5) if with_heads else PER_ROW
    apply_early_exit(model, EarlyExitConfig(policy=policy), heads=heads)
    original = run(model)
    with record_exit_stats(model) as stats:
        twin = copy.deepcopy(model)
    assert is_early_exit_applied(twin) and _engine_of(twin) is not _engine_of(model)
    assert _engine_of(twin).recorders == []  # the original's open recorders stay with the original
    assert torch.equal(run(twin), original)
    assert stats.num_calls == 0 and get_exit_stats(twin).num_calls == 1

    perturb(twin)
    assert not torch.equal(run(twin), original)  # the copy's hooks run the copy's weights
    assert torch.equal(run(model), original)  # and leave the original's alone

    remove_early_exit(twin)  # removing the copy's hooks leaves the original hooked
    assert is_early_exit_applied(model) and torch.equal(run(model), original)
    assert all("forward" not in vars(m) for m in (twin, *twin.transformer_blocks))


def test_deepcopy_of_a_pipeline_holding_a_hooked_model():
    pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=4), scheduler=DDIMScheduler())
    apply_early_exit(pipe.transformer, EarlyExitConfig(policy=PER_ROW))
    original = run(pipe.transformer)
    twin = copy.deepcopy(pipe)
    assert torch.equal(run(twin.transformer), original)
    perturb(twin.transformer)
    assert not torch.equal(run(twin.transformer), original)
    assert torch.equal(run(pipe.transformer), original)


def test_shallow_copy_shares_the_original_and_says_so():
    model = tiny_dit(num_layers=4)
    apply_early_exit(model, EarlyExitConfig(policy=PER_ROW))
    original = run(model)
    shallow = copy.copy(model)  # like any nn.Module's shallow copy: the same submodules and weights
    assert torch.equal(run(shallow), original)
    with pytest.raises(ValueError, match="shallow copy"):
        remove_early_exit(shallow)
    assert is_early_exit_applied(model)


def test_state_dict_round_trip_is_unaffected():
    model = tiny_dit(num_layers=4)
    stock_keys = list(model.state_dict())
    apply_early_exit(model, EarlyExitConfig(policy=PER_ROW))
    assert list(model.state_dict()) == stock_keys  # hooks are not modules: nothing new to save
    fresh = tiny_dit(num_layers=4, seed=5)
    fresh.load_state_dict(model.state_dict())
    remove_early_exit(model)
    assert torch.equal(run(fresh), run(model))
    apply_early_exit(fresh, EarlyExitConfig(policy=PER_ROW))
    fresh.load_state_dict(tiny_dit(num_layers=4, seed=5).state_dict())  # loading into a hooked model
    assert is_early_exit_applied(fresh)


def test_deepcopy_of_a_hooked_unet():
    model = tiny_unet()
    apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(1)), bridges=random_bridges(model))
    x, t = torch.randn(2, model.config.in_channels, model.config.sample_size, model.config.sample_size), T[:2]
    with torch.no_grad():
        original = model(x, t).sample
        twin = copy.deepcopy(model)
        assert torch.equal(twin(x, t).sample, original)
        for param in twin.down_blocks[0].parameters():
            param.add_(0.5)
        assert not torch.equal(twin(x, t).sample, original)
        assert torch.equal(model(x, t).sample, original)
