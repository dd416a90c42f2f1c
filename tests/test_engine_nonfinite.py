"""The engine's NaN/inf handling (`EarlyExitConfig.on_nonfinite`): fallbacks, records, raise mode, and pipelines
that never return non-finite images."""

import functools

import pytest
import torch
from diffusers import DDIMScheduler

from ee_diffusion import EarlyExitConfig, UncertaintyHeads, apply_early_exit, get_exit_stats, remove_early_exit
from ee_diffusion.hooks import _engine_of
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.schedules import StaticDepth, UncertaintyThreshold
from ee_diffusion.testing import tiny_dit

X, T, Y = torch.randn(4, 1, 8, 8), torch.tensor([100.0, 900.0, 100.0, 900.0]), torch.tensor([1, 2, 3, 4])


def _poison_block(model, index, rows):
    """Make block `index` return NaN for the given rows of its input batch (inside the engine's block hook)."""
    block = model.transformer_blocks[index]
    original = block.forward

    @functools.wraps(original)
    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs).clone()
        out[[r for r in rows if r < out.shape[0]]] = float("nan")
        return out

    block.forward = poisoned
    return type("Undo", (), {"remove": staticmethod(lambda: block.__dict__.pop("forward", None))})


class _Always:
    needs_certainty = False

    def exit_mask(self, ctx):
        return torch.ones_like(ctx.rows, dtype=torch.bool)


def test_nonfinite_exit_state_falls_back_and_is_recorded():
    model = tiny_dit(num_layers=4)
    handle = _poison_block(model, 0, [1])  # row 1 is NaN from block 0 on
    apply_early_exit(model, EarlyExitConfig(policy=_Always()))
    out = model(X, timestep=T, class_labels=Y).sample
    stats = get_exit_stats(model)
    assert stats.blocks_run[0].tolist() == [1, 4, 1, 1]  # row 1 was kept from exiting, ran to full depth
    assert stats.fallbacks[0].tolist() == [False, True, False, False]
    assert stats.nonfinite[0].tolist() == [False, True, False, False]
    assert stats.to_dict()["num_fallbacks"] == 1 and stats.to_dict()["nonfinite_rows"] == [[1]]
    assert torch.isfinite(out[[0, 2, 3]]).all()
    remove_early_exit(model)
    handle.remove()


def test_nonfinite_certainty_does_not_exit():
    model = tiny_dit(num_layers=4)
    heads = UncertaintyHeads.from_model(model)
    with torch.no_grad():
        for head in heads.heads:
            head.bias.fill_(20.0)  # certainty ~1: every row would exit after block 0
    original = heads.forward

    def inf_for_row_2(index, hidden, condition=None, mean=False):
        out = original(index, hidden, condition, mean=mean)
        return out.index_fill(0, torch.tensor([2]), float("inf")) if out.shape[0] == 4 else out

    heads.forward = inf_for_row_2
    apply_early_exit(model, EarlyExitConfig(policy=UncertaintyThreshold(0.5, patience=1)), heads=heads)
    model(X, timestep=T, class_labels=Y)
    stats = get_exit_stats(model)
    assert stats.blocks_run[0].tolist() == [1, 1, 2, 1]  # row 2 stayed one block longer
    assert stats.fallbacks[0].tolist() == [False, False, True, False] and stats.num_nonfinite == 0
    remove_early_exit(model)


def test_raise_mode_names_rows_and_planned_policies_add_no_rerun():
    model = tiny_dit(num_layers=4)
    handle = _poison_block(model, 1, [3])
    apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(2)))
    model(X, timestep=T, class_labels=Y)  # fallback mode (default): recorded, not raised
    assert get_exit_stats(model).nonfinite[0].tolist() == [False, False, False, True]
    remove_early_exit(model)
    apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(2), on_nonfinite="raise"))
    with pytest.raises(ValueError, match=r"NaN/inf for rows \[3\] of a batch of 4 .*blocks run \[2\] of 4"):
        model(X, timestep=T, class_labels=Y)
    assert _engine_of(model).call is None
    remove_early_exit(model)
    handle.remove()
    assert EarlyExitConfig.from_dict(EarlyExitConfig(on_nonfinite="raise").to_dict()).on_nonfinite == "raise"
    assert "on_nonfinite" not in EarlyExitConfig().to_dict()


def test_pipeline_never_returns_nan_images():
    model = tiny_dit(num_layers=2)
    pipe = EarlyExitDiTPipeline(transformer=model, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    handle = _poison_block(model, 0, [0])
    for config in (EarlyExitConfig(), EarlyExitConfig(policy=StaticDepth(1))):
        with pytest.raises(ValueError, match=r"NaN/inf in rows \[0\] of the final latents"):
            pipe(class_labels=[1, 2], num_inference_steps=2, guidance_scale=1.0, exit_config=config)
    handle.remove()
