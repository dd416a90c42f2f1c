"""What the trainer trains: the denoiser (a DiT or a class-conditional U-Net), its exit heads and U-Net bridges,
the mode's loss around them (`TrainingObjective`) and the noise schedulers.

```py
>>> import torch
>>> from ee_diffusion.training.config import ExperimentConfig, ModelConfig, TrainConfig
>>> config = ExperimentConfig(model=ModelConfig(num_layers=2, width=16, num_heads=2), train=TrainConfig(mode="deediff"))
>>> denoiser = build_denoiser(config.model)
>>> objective = TrainingObjective(denoiser, build_heads(denoiser, config), config.train)
>>> x, noise = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
>>> sorted(objective(x, noise, torch.tensor([5, 700]), torch.tensor([1, 10])))
['block_mse', 'certainty', 'loss', 'simple', 'ual', 'uncertainty']

```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiTTransformer2DModel, UNet2DModel
from torch import nn

from ..adapters import get_adapter
from ..heads import UncertaintyHeads
from ..unet import UNetExitBridges
from .config import ExperimentConfig, ModelConfig, TrainConfig
from .losses import ase_loss, deediff_loss, eps_channels, simple_loss, squared_error


def build_denoiser(config: ModelConfig) -> DiTTransformer2DModel | UNet2DModel:
    """A fresh denoiser from `config` (`kind="dit"`: a DiT; `kind="unet"`: `build_unet`), or the one saved in
    the pipeline folder `config.init_from`.

    ```py
    >>> from ee_diffusion.training.config import ModelConfig
    >>> type(build_denoiser(ModelConfig(num_layers=2, width=16, num_heads=2))).__name__
    'DiTTransformer2DModel'

    ```
    """
    if config.kind == "unet":
        return build_unet(config)
    if config.init_from is not None:
        model = DiTTransformer2DModel.from_pretrained(config.init_from, subfolder="transformer")
    else:
        model = DiTTransformer2DModel(
            num_attention_heads=config.num_heads,
            attention_head_dim=config.width // config.num_heads,
            in_channels=config.in_channels,
            out_channels=2 * config.in_channels if config.learn_sigma else None,
            num_layers=config.num_layers,
            sample_size=config.sample_size,
            patch_size=config.patch_size,
            num_embeds_ada_norm=config.num_classes,
            norm_num_groups=1,
        )
    disable_block_label_dropout(model)
    return model


def disable_block_label_dropout(model: DiTTransformer2DModel) -> None:
    """Label dropout is done once per sample by the trainer; every DiT block's embedder would otherwise drop
    labels independently (and differently per block) in train mode (diffusers builds them with p = 0.1)."""
    for block in model.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0


def build_unet(config: ModelConfig) -> UNet2DModel:
    """A fresh class-conditional `UNet2DModel` (class embedding with a null row), or `init_from/unet`."""
    if config.init_from is not None:
        return UNet2DModel.from_pretrained(config.init_from, subfolder="unet")
    attention = set(config.unet_attention_levels)
    levels = range(len(config.unet_channels))
    return UNet2DModel(
        sample_size=config.sample_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        layers_per_block=config.unet_layers_per_block,
        block_out_channels=tuple(config.unet_channels),
        down_block_types=tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if len(levels) - 1 - j in attention else "UpBlock2D" for j in levels),
        norm_num_groups=config.unet_norm_groups,
        attention_head_dim=min(config.unet_channels),
        num_class_embeds=config.num_classes + 1,  # the last row is the null class (guidance dropout)
    )


def build_bridges(model: nn.Module, config: ExperimentConfig) -> UNetExitBridges | None:
    """U-Nets in an exit mode: their bridges, loaded from `init_from/exit_bridges` when present; else None."""
    if not isinstance(model, UNet2DModel) or config.train.mode == "scratch":
        return None
    folder = config.model.init_from
    if folder is not None and (Path(folder) / "exit_bridges").is_dir():
        bridges = UNetExitBridges.from_pretrained(folder, subfolder="exit_bridges")
        bridges.check_model(model)
        return bridges
    return UNetExitBridges.from_model(model)


def build_heads(model: nn.Module, config: ExperimentConfig) -> UncertaintyHeads | None:
    """The uncertainty heads the mode needs (deediff, heads): loaded from `exit_heads/` of `init_from` (or of
    the trained stock pipeline folder) when present and conditioned as the loss asks, else fresh; None for the
    other modes."""
    train = config.train
    if train.mode not in ("deediff", "heads"):
        return None
    conditioned = train.deediff.condition_on_timestep
    folder = config.pipeline.folder if config.pipeline is not None else config.model.init_from
    if folder is not None and (Path(folder) / "exit_heads").is_dir():
        heads = UncertaintyHeads.from_pretrained(folder, subfolder="exit_heads")
        heads.check_model(model)
        if heads.conditioned == conditioned:
            return heads
    return UncertaintyHeads.from_model(model, condition_on_timestep=conditioned)


class TrainingObjective(nn.Module):
    """The denoiser (the DiT or the U-Net), heads and U-Net bridges with the mode's loss as `forward`, so DDP
    wraps one module.

    `forward(noisy, target, timestep, class_labels, block_errors, **conditioning)` returns a dict with `loss`
    and the terms to log; with `block_errors=True` it includes `block_mse` (N,), each block's decoded error
    (detached). `target` is the noise (DDPM models) or the velocity (flow matching); `conditioning` holds
    the text inputs of PixArt and SD3 transformers (`decoder.exit_outputs`). Example: the module docstring.
    """

    def __init__(self, denoiser: nn.Module, heads: UncertaintyHeads | None, config: TrainConfig,
                 bridges: UNetExitBridges | None = None) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.heads = heads
        self.bridges = bridges
        self.mode = config.mode
        self.deediff = config.deediff
        self.ase = config.ase
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)

    def forward(
        self,
        noisy: torch.Tensor,
        target: torch.Tensor,
        timestep: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        block_errors: bool = False,
        **conditioning: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        if self.bridges is not None:
            conditioning["bridges"] = self.bridges
        if self.mode in ("deediff", "heads"):
            return deediff_loss(self.denoiser, self.heads, noisy, target, timestep, class_labels, self.deediff,
                                **conditioning)
        if self.mode == "ase":
            return ase_loss(self.denoiser, noisy, target, timestep, class_labels, self.ase, **conditioning)
        if isinstance(self.denoiser, UNet2DModel):
            # scratch U-Net: L_simple on the model's output (no bridges, so no per-depth errors).
            return simple_loss(self.denoiser, noisy, target, timestep, class_labels)
        # scratch transformer: L_simple on the final block; the other blocks' errors only when asked (for the log).
        if class_labels is not None:
            conditioning["class_labels"] = class_labels
        decoder = get_adapter(self.denoiser).decoder
        channels = decoder.prediction_shape()[0]
        hidden = decoder.hidden_states_per_block(noisy, timestep, **conditioning)  # N x (B, L, D)

        def eps_at(h: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
            return eps_channels(decoder.decode(h, timestep=timestep, **conditioning), channels)

        simple = squared_error(eps_at(hidden[-1]), target)
        out = {"loss": simple, "simple": simple}
        if block_errors:
            with torch.no_grad():
                out["block_mse"] = torch.stack([squared_error(eps_at(h), target) for h in hidden])
        return out


def _rename_legacy_keys(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints of version 0.1 named the denoiser `transformer`: map `transformer.*` to `denoiser.*` in place,
    so their runs resume exactly."""
    legacy = prefix + "transformer."
    for key in [k for k in state_dict if k.startswith(legacy)]:
        state_dict[prefix + "denoiser." + key[len(legacy):]] = state_dict.pop(key)


def freeze_for_mode(denoiser: nn.Module, mode: str) -> None:
    """Freeze what the mode does not train: heads, the whole denoiser; ase, its timestep embedders (ASE
    fine-tuning keeps the embedding of t fixed)."""
    for name, param in denoiser.named_parameters():
        if mode == "heads":
            param.requires_grad_(False)
        elif mode == "ase" and (".timestep_embedder." in name or name.startswith("time_embedding.")):
            param.requires_grad_(False)


def make_noise_scheduler(config: TrainConfig) -> DDPMScheduler:
    """The training noise schedule (`add_noise`), from `num_train_timesteps` and `beta_schedule`."""
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule)


def make_sampling_scheduler(config: ExperimentConfig) -> DDPMScheduler | DDIMScheduler:
    """The scheduler saved with the pipeline: the training noise schedule, DDIM or DDPM sampling.

    ```py
    >>> from ee_diffusion.training.config import ExperimentConfig
    >>> type(make_sampling_scheduler(ExperimentConfig(sampling_scheduler="ddim"))).__name__
    'DDIMScheduler'

    ```
    """
    noise = make_noise_scheduler(config.train)
    return noise if config.sampling_scheduler == "ddpm" else DDIMScheduler.from_config(noise.config)
