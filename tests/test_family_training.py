"""DeeDiff heads and the layer-wise loss on every newer family (flow matching, as their pipelines train): each
block's certainty map is laid out as the model's prediction by the family's decoder (`ExitDecoder.arrange`: packed
tokens, 2-D or 3-D unpatchify, the joint sequence's image part), and the joint loss falls on a tiny fixed set."""

from __future__ import annotations

import pytest
import torch

from ee_diffusion import EarlyExitConfig, UncertaintyHeads, apply_early_exit, remove_early_exit, testing
from ee_diffusion.adapters import get_adapter
from ee_diffusion.schedules import ExitContext, ExitPolicy
from ee_diffusion.training.losses import deediff_loss, heads_condition

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # about 25 s on one thread

FAMILIES = ("flux", "qwenimage", "wan", "cogvideox", "hunyuanvideo", "chroma", "sana", "cogview4", "ltx", "auraflow",
            "lumina2", "hunyuandit", "hidream")
STEPS, FACTOR = 30, 4.0  # the prediction's loss must fall at least FACTOR-fold in STEPS Adam steps


def _flow_batch(name: str) -> tuple[torch.nn.Module, dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tiny model, its other inputs, and a flow-matching batch: x_t = (1 - s) x0 + s n, target n - x0."""
    torch.manual_seed(0)
    model = getattr(testing, f"tiny_{name}")().train()
    inputs = getattr(testing, f"{name}_inputs")(model, batch=2)
    x0, timestep = inputs.pop("hidden_states"), inputs.pop(get_adapter(model).timestep_arg)  # HiDream: `timesteps`
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    sigma = get_adapter(model).schedule_timesteps(timestep) / 1000  # the noise level of every family's timestep
    sigma = sigma.view(-1, *[1] * (x0.ndim - 1))
    return model, inputs, (1 - sigma) * x0 + sigma * noise, noise - x0, timestep


@pytest.mark.parametrize("name", FAMILIES)
def test_heads_maps_match_the_prediction_and_the_joint_loss_falls(name):
    model, inputs, noisy, target, timestep = _flow_batch(name)
    heads = UncertaintyHeads.from_model(model)
    initial = [p.detach().clone() for p in heads.parameters()]
    first = deediff_loss(model, heads, noisy, target, timestep, **inputs)
    # Every block's prediction and certainty map have the target's shape (the loss compares them element-wise).
    _, predictions = get_adapter(model).decoder.exit_outputs(noisy, timestep, **inputs)
    assert all(p.shape == target.shape for p in predictions)
    optimizer = torch.optim.Adam([*model.parameters(), *heads.parameters()], lr=3e-3)
    losses = []
    for _ in range(STEPS):
        out = deediff_loss(model, heads, noisy, target, timestep, **inputs)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    assert losses[0] == pytest.approx(float(first["loss"]))
    assert losses[-1] < losses[0], f"{name}: the joint loss went {losses[0]:.4f} -> {losses[-1]:.4f}"
    simple = float(first["simple"]), float(out["simple"].detach())
    assert simple[1] * FACTOR < simple[0], f"{name}: the prediction's loss went {simple[0]:.4f} -> {simple[1]:.4f}"
    assert all(not torch.equal(a, p) for a, p in zip(initial, heads.parameters()))  # every head learns too


class _RecordCertainty(ExitPolicy):
    """Never exits; keeps the (A,) mean certainty the engine hands it after every block."""

    needs_certainty = True

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        self.seen.append(ctx.certainty.detach().clone())
        return super().exit_mask(ctx)


@pytest.mark.parametrize("name", ["flux", "qwenimage", "chroma", "auraflow", "wan", "lumina2", "hunyuandit",
                                  "hidream"])
def test_conditioned_heads_see_the_same_timestep_in_training_and_at_inference(name):
    """The loss embeds a 0-1 model's timestep as the engine does (in 0-999), so timestep-conditioned heads trained
    through `deediff_loss` give at inference the certainties they were trained to give."""
    model, inputs, noisy, _, timestep = _flow_batch(name)
    model.eval()
    heads = UncertaintyHeads.from_model(model, condition_on_timestep=True)
    hidden, _ = get_adapter(model).decoder.exit_outputs(noisy, timestep, **inputs)
    condition = heads_condition(model, timestep, hidden[0].dtype)  # what `deediff_loss` gives the heads
    trained = [heads(i, h, condition, mean=True) for i, h in enumerate(hidden)]
    policy = _RecordCertainty()
    apply_early_exit(model, EarlyExitConfig(policy), heads=heads)
    with torch.no_grad():
        model(hidden_states=noisy, **{get_adapter(model).timestep_arg: timestep}, **inputs)
    remove_early_exit(model)
    for block, (seen, expected) in enumerate(zip(policy.seen, trained)):
        torch.testing.assert_close(seen, expected.detach(), rtol=0, atol=1e-5, msg=f"block {block}")
