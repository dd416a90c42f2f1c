import math

import pytest
import torch
import torch.nn.functional as F

from ee_diffusion import UncertaintyHeads
from ee_diffusion.families.decoder import unpatchify
from ee_diffusion.testing import tiny_dit
from ee_diffusion.training.losses import (
    ASELossConfig,
    DeeDiffLossConfig,
    ase_loss,
    deediff_loss,
    deediff_loss_terms,
    simple_loss,
)


# ------------------------------------------------------------------------------------------ tensor-level, by hand
def _two_block_case():
    noise = torch.tensor([[[[0.0, 0.0]]]])  # (1, 1, 1, 2)
    eps = [torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 2.0]]]])]
    cert = [torch.tensor([[[[0.5, 0.5]]]]), torch.tensor([[[[0.9, 0.7]]]])]
    return noise, eps, cert


def _by_hand(reduction: str, weighting: str, lam=1.0, beta=1.0):
    mse = [(1 + 0) / 2, (0 + 4) / 2]
    t0 = [1 - math.tanh(1), 1 - math.tanh(0)]
    t1 = [1 - math.tanh(0), 1 - math.tanh(2)]
    lu = [((0.5 - t0[0]) ** 2 + (0.5 - t0[1]) ** 2) / 2, ((0.9 - t1[0]) ** 2 + (0.7 - t1[1]) ** 2) / 2]
    l_u = sum(lu) / 2 if reduction == "mean" else sum(lu)
    cbar = [0.5, 0.8]
    w = [c / sum(cbar) for c in cbar] if weighting == "normalized" else cbar
    ual = w[0] * mse[0] + w[1] * mse[1]
    return mse[1], l_u, ual, mse[1] + lam * l_u + beta * ual


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighting", ["normalized", "paper"])
def test_deediff_terms_match_hand_computation(reduction, weighting):
    noise, eps, cert = _two_block_case()
    cfg = DeeDiffLossConfig(uncertainty_reduction=reduction, layer_weighting=weighting, lambda_u=0.5, beta=2.0)
    out = deediff_loss_terms(eps, cert, noise, cfg)
    simple, l_u, ual, total = _by_hand(reduction, weighting, lam=0.5, beta=2.0)
    assert out["simple"].item() == pytest.approx(simple, abs=1e-6)
    assert out["uncertainty"].item() == pytest.approx(l_u, abs=1e-6)
    assert out["ual"].item() == pytest.approx(ual, abs=1e-6)
    assert out["loss"].item() == pytest.approx(total, abs=1e-6)
    assert out["block_mse"].tolist() == pytest.approx([0.5, 2.0])
    assert out["certainty"].tolist() == pytest.approx([0.5, 0.8])


def test_ual_weights_are_not_detached_and_target_is():
    noise, eps, cert = _two_block_case()
    eps = [e.clone().requires_grad_() for e in eps]
    cert = [c.clone().requires_grad_() for c in cert]
    # Only L_UAL: gradient reaches the certainties through cbar (not detached).
    out = deediff_loss_terms(eps, cert, noise, DeeDiffLossConfig(lambda_u=0, simple_weight=0, beta=1))
    out["loss"].backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in cert)
    # Only L_u: the target is detached, so no gradient reaches the predictions.
    eps2 = [e.detach().clone().requires_grad_() for e in eps]
    out = deediff_loss_terms(eps2, cert, noise, DeeDiffLossConfig(lambda_u=1, simple_weight=0, beta=0))
    out["loss"].backward()
    assert all(e.grad is None or e.grad.abs().sum() == 0 for e in eps2)


# -------------------------------------------------------------------------------------- model-level, by hand
def _manual_pass(model, x, t, y):
    """Explicit re-implementation of DiT's forward, keeping every block's hidden state and decode."""
    h = model.pos_embed(x)
    hidden, eps = [], []
    for block in model.transformer_blocks:
        h = block(h, timestep=t, class_labels=y)
        hidden.append(h)
        cond = model.transformer_blocks[0].norm1.emb(t, y, hidden_dtype=h.dtype)
        shift, scale = model.proj_out_1(F.silu(cond)).chunk(2, dim=1)
        out = model.proj_out_2(model.norm_out(h) * (1 + scale[:, None]) + shift[:, None])
        eps.append(unpatchify(out, 2, model.out_channels)[:, : model.config.in_channels])
    return hidden, eps


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g), torch.tensor([10, 500, 990]), torch.tensor([0, 4, 10])


@pytest.mark.parametrize("conditioned", [False, True])
def test_deediff_loss_on_tiny_model_matches_explicit_formulas(batch, conditioned):
    x, noise, t, y = batch
    model = tiny_dit(num_layers=3)
    heads = UncertaintyHeads.from_model(model, condition_on_timestep=conditioned)
    out = deediff_loss(model, heads, x, noise, t, y, DeeDiffLossConfig(condition_on_timestep=conditioned))

    with torch.no_grad():
        hidden, eps = _manual_pass(model, x, t, y)
        assert torch.equal(eps[-1], model(x, timestep=t, class_labels=y).sample)
        emb = model.transformer_blocks[0].norm1.emb
        temb = emb.timestep_embedder(emb.time_proj(t).to(x.dtype))
        certs = []
        for i, h in enumerate(hidden):
            inp = torch.cat([h, temb[:, None].expand(-1, h.shape[1], -1)], -1) if conditioned else h
            certs.append(torch.sigmoid(unpatchify(heads.heads[i](inp), 2, 1)))
        mse = [((e - noise) ** 2).mean() for e in eps]
        l_u = sum(((c - (1 - torch.tanh((e - noise).abs()))) ** 2).mean() for c, e in zip(certs, eps)) / 3
        cbar = torch.stack([c.mean() for c in certs])
        ual = sum((cbar[i] / cbar.sum()) * mse[i] for i in range(3))
        total = mse[-1] + l_u + ual
    torch.testing.assert_close(out["simple"], mse[-1], rtol=0, atol=1e-6)
    torch.testing.assert_close(out["uncertainty"], l_u, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["ual"], ual, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["loss"], total, rtol=0, atol=1e-6)


def test_certainty_loss_does_not_train_backbone(batch):
    x, noise, t, y = batch
    model = tiny_dit(num_layers=2)
    heads = UncertaintyHeads.from_model(model)
    out = deediff_loss(model, heads, x, noise, t, y, DeeDiffLossConfig(simple_weight=0, beta=0))
    out["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    assert all(p.grad is not None for p in heads.parameters())


def test_learned_sigma_uses_eps_channels_only(batch):
    x, noise, t, y = batch
    model = tiny_dit(num_layers=2, learn_sigma=True)
    heads = UncertaintyHeads.from_model(model)
    out = deediff_loss(model, heads, x, noise, t, y)
    with torch.no_grad():
        eps = model(x, timestep=t, class_labels=y).sample[:, :1]
    torch.testing.assert_close(out["simple"], ((eps - noise) ** 2).mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(simple_loss(model, x, noise, t, y)["simple"], out["simple"], rtol=0, atol=1e-6)


def test_ase_loss_decodes_each_rows_scheduled_block(batch):
    x, noise, t, y = batch
    model = tiny_dit(num_layers=3)
    cfg = ASELossConfig(schedule={"type": "TimestepSchedule", "boundaries": [200, 800], "depths": [3, 2, 1]})
    out = ase_loss(model, x, noise, t, y, cfg)
    with torch.no_grad():
        _, eps = _manual_pass(model, x, t, y)
        # t = 10 -> depth 3, t = 500 -> depth 2, t = 990 -> depth 1
        picked = torch.stack([eps[2][0], eps[1][1], eps[0][2]])
        expected = ((picked - noise) ** 2).mean()
    torch.testing.assert_close(out["ase"], expected, rtol=0, atol=1e-6)
    assert out["depth"].item() == pytest.approx(2.0)


def test_bad_configs_raise(batch):
    with pytest.raises(ValueError, match="uncertainty_reduction must be one of"):
        DeeDiffLossConfig(uncertainty_reduction="max")
    with pytest.raises(ValueError, match="layer_weighting must be one of"):
        DeeDiffLossConfig(layer_weighting="softmax")
    with pytest.raises(ValueError, match="lambda_u must be a number >= 0"):
        DeeDiffLossConfig(lambda_u=-1)
    with pytest.raises(ValueError, match="ASE schedule type must be one of"):
        ASELossConfig(schedule={"type": "Nope"})
    x, noise, t, y = batch
    model = tiny_dit(num_layers=2)
    with pytest.raises(ValueError, match="timestep-conditioned"):
        deediff_loss(model, UncertaintyHeads.from_model(model), x, noise, t, y, DeeDiffLossConfig(condition_on_timestep=True))
    with pytest.raises(ValueError, match="asks for depth 5"):
        ase_loss(model, x, noise, t, y, ASELossConfig(schedule={"type": "StaticDepth", "depth": 5}))
