"""Training losses: DeeDiff (L_simple + L_u + L_UAL) and ASE (diffusion loss at the scheduled exit block).

Every intermediate prediction is the backbone adapter's `decode` of a block's hidden state - the same code path
the early-exit engine uses at inference - so what is trained is exactly what is run.

Squared norms `||a - b||^2` are means over all elements (batch, channels, pixels), as in the authors' code
(`mean_flat` followed by a batch mean).

The regression `target` of every loss is what the model predicts: the noise eps for DDPM models (DiT, PixArt,
U-Nets; `noisy = add_noise(x0, eps, t)`), the velocity `eps - x0` for flow-matching models (SD3;
`noisy = (1 - sigma) x0 + sigma eps`, timestep `1000 sigma`). The papers write the losses for eps; every term
(the layer-wise errors, the certainty target `1 - tanh|pred_i - target|`) reads the same with velocity.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_number
from ..adapters import get_adapter
from ..heads import UncertaintyHeads
from ..policies.static import StaticDepth, TimestepSchedule

UNCERTAINTY_REDUCTIONS = ("mean", "sum")
LAYER_WEIGHTINGS = ("normalized", "paper")


@dataclass
class DeeDiffLossConfig:
    """Options of the DeeDiff loss `L = simple_weight * L_simple + lambda_u * L_u + beta * L_UAL`.

    Args:
        lambda_u: weight of the certainty loss L_u (paper: lambda = 1).
        beta: weight of the uncertainty-aware layer-wise loss L_UAL (paper: beta = 1).
        simple_weight: weight of L_simple (1; the paper has no knob for it).
        uncertainty_reduction: `"mean"` over layers for L_u (authors' code) or `"sum"` (paper).
        layer_weighting: `"normalized"`: w_i = cbar_i / sum_j cbar_j (authors' code); `"paper"`: w_i = cbar_i,
            i.e. `(1 - u_i)` without normalisation.
        condition_on_timestep: heads see the model's timestep embedding (paper form of the UEM). The heads
            given to the loss must have been built to match (`UncertaintyHeads.from_model(model, True)`).
    """

    lambda_u: float = 1.0
    beta: float = 1.0
    simple_weight: float = 1.0
    uncertainty_reduction: str = "mean"
    layer_weighting: str = "normalized"
    condition_on_timestep: bool = False

    def __post_init__(self) -> None:
        self.lambda_u = check_number(self.lambda_u, "lambda_u")
        self.beta = check_number(self.beta, "beta")
        self.simple_weight = check_number(self.simple_weight, "simple_weight")
        if self.uncertainty_reduction not in UNCERTAINTY_REDUCTIONS:
            raise ValueError(
                f"uncertainty_reduction must be one of {UNCERTAINTY_REDUCTIONS}, got {self.uncertainty_reduction!r}"
            )
        if self.layer_weighting not in LAYER_WEIGHTINGS:
            raise ValueError(f"layer_weighting must be one of {LAYER_WEIGHTINGS}, got {self.layer_weighting!r}")
        if not isinstance(self.condition_on_timestep, bool):
            raise ValueError(f"condition_on_timestep must be a bool, got {self.condition_on_timestep!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ASELossConfig:
    """Options of the ASE loss: the exit schedule S(t) whose exit blocks are trained, a `TimestepSchedule` or
    `StaticDepth` or its `to_dict()`."""

    schedule: Any = field(default_factory=lambda: TimestepSchedule(boundaries=[200, 400, 600, 800], depths=[8, 7, 6, 5, 4]))

    def __post_init__(self) -> None:
        if isinstance(self.schedule, dict):
            kind = self.schedule.get("type")
            kwargs = {k: v for k, v in self.schedule.items() if k != "type"}
            known = {"TimestepSchedule": TimestepSchedule, "StaticDepth": StaticDepth}
            if kind not in known:
                raise ValueError(f"ASE schedule type must be one of {sorted(known)}, got {kind!r}")
            self.schedule = known[kind](**kwargs)
        if not isinstance(self.schedule, (TimestepSchedule, StaticDepth)):
            raise ValueError(
                f"schedule must be a TimestepSchedule or StaticDepth (or its dict), got {type(self.schedule).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.to_dict()}


def eps_channels(prediction: torch.Tensor, channels: int) -> torch.Tensor:
    """The noise half of a prediction: models with a learned variance output 2C channels, eps is the first C."""
    return prediction[:, :channels]


def squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`||prediction - target||^2` as a scalar: the mean over every element (batch, channels, pixels), float32."""
    return (prediction.float() - target.float()).pow(2).mean()


def block_predictions(
    model: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    **conditioning: Any,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One pass through every block: (hidden states h_i (B, L, D), eps predictions eps_i = g(h_i) (B, C, H, W)).

    eps_i keeps only the eps channels of a learned-sigma model; the last one is the model's own output. Other
    backbones take their conditioning as keywords (`decoder.exit_outputs`; U-Nets also `bridges=`, and h_i is
    then level i's feature map).
    """
    if class_labels is not None:
        conditioning["class_labels"] = class_labels
    return get_adapter(model).decoder.exit_outputs(sample, timestep, **conditioning)


def heads_condition(model: nn.Module, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, D) what timestep-conditioned heads read for the model's own `timestep` (B,): its embedding of the 0-999
    timestep, as the engine computes it at inference (`schedule_timesteps`: a 0-1 model's timestep x 1000)."""
    adapter = get_adapter(model)
    return adapter.decoder.timestep_embedding(adapter.schedule_timesteps(timestep), dtype)


def deediff_loss_terms(
    eps_blocks: list[torch.Tensor],
    certainties: list[torch.Tensor],
    target: torch.Tensor,
    config: DeeDiffLossConfig,
) -> dict[str, torch.Tensor]:
    """The DeeDiff loss from per-block predictions and certainty maps (all shaped like `target`, (B, C, H, W):
    the noise, or the velocity of a flow-matching model).

    Returns a dict with `loss` (the weighted total), `simple`, `uncertainty`, `ual`, `block_mse` ((N,), detached
    per-block ||eps_i - target||^2) and `certainty` ((N,), detached cbar_i).
    """
    if len(eps_blocks) != len(certainties) or not eps_blocks:
        raise ValueError(f"need one certainty map per block, got {len(eps_blocks)} predictions and {len(certainties)} maps")
    block_mse = torch.stack([squared_error(eps_i, target) for eps_i in eps_blocks])  # (N,)
    simple = block_mse[-1]
    # L_u: certainty target 1 - tanh|eps_i - eps|, detached (it must not train the backbone).
    u_terms = torch.stack([
        F.mse_loss(c_i.float(), (1 - torch.tanh((eps_i.float() - target.float()).abs())).detach())
        for c_i, eps_i in zip(certainties, eps_blocks)
    ])
    uncertainty = u_terms.mean() if config.uncertainty_reduction == "mean" else u_terms.sum()
    # L_UAL: layer weights from the mean certainty of each layer, NOT detached (it also trains the heads).
    cbar = torch.stack([c_i.float().mean() for c_i in certainties])  # (N,)
    weights = cbar / cbar.sum() if config.layer_weighting == "normalized" else cbar
    ual = (weights * block_mse).sum()
    loss = config.simple_weight * simple + config.lambda_u * uncertainty + config.beta * ual
    return {"loss": loss, "simple": simple, "uncertainty": uncertainty, "ual": ual,
            "block_mse": block_mse.detach(), "certainty": cbar.detach()}


def deediff_loss(
    model: nn.Module,
    heads: UncertaintyHeads,
    noisy: torch.Tensor,
    target: torch.Tensor,
    timestep: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    config: DeeDiffLossConfig | None = None,
    **conditioning: Any,
) -> dict[str, torch.Tensor]:
    """DeeDiff's joint loss on one batch of noised samples `noisy` (from x0, noise and `timestep`) and the
    regression `target` (the noise, or the velocity of a flow-matching model).

    `conditioning`: the inputs of non-DiT backbones, as for `block_predictions`.

    ```py
    >>> import torch
    >>> from ee_diffusion.testing import tiny_dit
    >>> from ee_diffusion import UncertaintyHeads
    >>> model = tiny_dit(num_layers=2); heads = UncertaintyHeads.from_model(model)
    >>> x, n = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    >>> out = deediff_loss(model, heads, x, n, torch.tensor([5, 700]), torch.tensor([1, 2]))
    >>> sorted(out)
    ['block_mse', 'certainty', 'loss', 'simple', 'ual', 'uncertainty']

    ```
    """
    config = DeeDiffLossConfig() if config is None else config
    if heads.conditioned != config.condition_on_timestep:
        raise ValueError(
            f"the loss config says condition_on_timestep={config.condition_on_timestep} but the heads are "
            f"{'' if heads.conditioned else 'not '}timestep-conditioned; build them with "
            f"UncertaintyHeads.from_model(model, condition_on_timestep={config.condition_on_timestep})"
        )
    hidden, eps = block_predictions(model, noisy, timestep, class_labels, **conditioning)
    decoder = get_adapter(model).decoder
    condition = heads_condition(model, timestep, hidden[0].dtype) if heads.conditioned else None
    arrange = None
    if heads.config.feature_channels is None:  # token heads: their maps laid out as the model's prediction
        inputs = {**conditioning, "sample": noisy} if decoder.decode_reads_sample else conditioning
        arrange = functools.partial(decoder.arrange, **inputs)
    # Heads read detached block outputs (UncertaintyHeads.forward detaches its inputs).
    certainties = [heads(i, h, condition, arrange=arrange) for i, h in enumerate(hidden)]
    return deediff_loss_terms(eps, certainties, target, config)


def simple_loss(
    model: nn.Module, noisy: torch.Tensor, target: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The ordinary diffusion loss ||target - prediction||^2 on the model's own output (eps channels only)."""
    channels = get_adapter(model).decoder.prediction_shape()[0]
    prediction = model(noisy, timestep=timestep, class_labels=class_labels).sample
    simple = squared_error(eps_channels(prediction, channels), target)
    return {"loss": simple, "simple": simple}


def ase_loss(
    model: nn.Module,
    noisy: torch.Tensor,
    target: torch.Tensor,
    timestep: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    config: ASELossConfig | None = None,
    **conditioning: Any,
) -> dict[str, torch.Tensor]:
    """ASE: the diffusion loss on the prediction decoded at each sample's scheduled exit block S(t).

    All blocks run once and every block is decoded with the model's output head; each row's prediction at
    block S(t_row) - 1 is picked. Returns `loss` (= `ase`), `ase`, `block_mse` ((N,) detached per-block error,
    for logging) and `depth` (mean scheduled depth). `conditioning`: as for `block_predictions`.

    ```py
    >>> import torch
    >>> from ee_diffusion.testing import tiny_dit
    >>> model = tiny_dit(num_layers=2)
    >>> cfg = ASELossConfig(schedule={"type": "TimestepSchedule", "boundaries": [500], "depths": [2, 1]})
    >>> out = ase_loss(model, torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.tensor([5, 700]),
    ...                torch.tensor([1, 2]), cfg)
    >>> float(out["depth"])
    1.5

    ```
    """
    config = ASELossConfig() if config is None else config
    adapter = get_adapter(model)
    config.schedule.validate_for(adapter)
    _, eps = block_predictions(model, noisy, timestep, class_labels, **conditioning)
    depths = config.schedule.plan_depths(timestep.float(), adapter.num_blocks)  # (B,) in 1..N
    stacked = torch.stack(eps)  # (N, B, C, H, W)
    rows = torch.arange(noisy.shape[0], device=noisy.device)
    prediction = stacked[depths.to(stacked.device) - 1, rows]  # (B, C, H, W)
    ase = squared_error(prediction, target)
    with torch.no_grad():
        block_mse = torch.stack([squared_error(e, target) for e in eps])
    return {"loss": ase, "ase": ase, "block_mse": block_mse, "depth": depths.float().mean()}
