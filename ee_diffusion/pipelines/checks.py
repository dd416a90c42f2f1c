"""Checks of the early-exit pipelines' components, weights, labels and outputs (clear errors, before work)."""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.schedulers import SchedulerMixin
from torch import nn

from ..adapters import get_adapter
from ..heads import UncertaintyHeads
from ..stats import ExitStats


def check_components(name: str, denoiser: nn.Module, scheduler: Any, vae: Any, exit_heads: Any) -> None:
    """Refuse components of the wrong kind up front, before they fail deep inside a sampling loop.

    `name` is the denoiser's component name ("transformer", "unet"), for the messages.
    """
    in_channels = denoiser.config.in_channels
    if not isinstance(scheduler, SchedulerMixin):
        raise TypeError(
            f"scheduler must be a diffusers scheduler (SchedulerMixin, e.g. DDIMScheduler), got {type(scheduler).__name__}"
        )
    if vae is not None:
        if not isinstance(vae, AutoencoderKL):
            raise TypeError(f"vae must be an AutoencoderKL (latent space) or None (pixel space), got {type(vae).__name__}")
        if vae.config.latent_channels != in_channels:
            raise ValueError(
                f"the vae's latent_channels ({vae.config.latent_channels}) must equal the {name}'s in_channels "
                f"({in_channels}): this vae was made for another model"
            )
    if exit_heads is not None:
        if not isinstance(exit_heads, UncertaintyHeads):
            raise TypeError(f"exit_heads must be UncertaintyHeads or None, got {type(exit_heads).__name__}")
        exit_heads.check_model(denoiser)
    if get_adapter(denoiser).null_class_id() is None:
        raise ValueError(
            f"the {type(denoiser).__name__} must be class-conditional with a null class for guidance "
            f"(DiT: num_embeds_ada_norm; UNet2DModel: num_class_embeds = classes + 1), got none"
        )


def check_weights_match(model: nn.Module, folder: str, variant: str | None) -> None:
    """Raise `ValueError` when the weights file of `folder` lacks parameters of `model` or has extra ones.

    Reads the safetensors header only (names), no tensor data.
    """
    from safetensors import safe_open

    name = "diffusion_pytorch_model" + (f".{variant}" if variant else "") + ".safetensors"
    file = os.path.join(folder, name)
    if not os.path.isfile(file):  # sharded or otherwise named: diffusers has checked what it loaded
        return
    with safe_open(file, framework="pt") as f:
        stored = set(f.keys())
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - stored), sorted(stored - expected)
    if missing or unexpected:
        raise ValueError(
            f"{file!r} does not match {os.path.join(folder, 'config.json')!r}: missing {missing[:6]}, unexpected "
            f"{unexpected[:6]} ({len(missing)} missing, {len(unexpected)} unexpected; was the config edited?)"
        )


def check_finite(values: torch.Tensor, what: str, exit_stats: ExitStats) -> None:
    """Raise `ValueError` instead of returning NaN/inf images (one host sync per pipeline call)."""
    finite = torch.isfinite(values).reshape(values.shape[0], -1).all(1)
    if bool(finite.all()):
        return
    rows = (~finite).nonzero().flatten().tolist()
    raise ValueError(
        f"sampling produced NaN/inf in rows {rows} of the {what}; over {exit_stats.num_calls} model calls "
        f"{exit_stats.num_nonfinite} row outputs were non-finite and {exit_stats.num_fallbacks} rows fell back "
        f"towards full depth (ExitStats.nonfinite/fallbacks). Check the weights, the latents and the scheduler; "
        f"exit_config=EarlyExitConfig() runs the full model for comparison"
    )


def id2label_labels(id2label: Any) -> tuple[dict[str, str] | None, dict[str, int]]:
    """`{id: "name, other name"}` -> (the JSON-safe map `{"id": "names"}`, `{name: id}` sorted by name)."""
    if id2label is None:
        return None, {}
    if not isinstance(id2label, dict):
        raise TypeError(f"id2label must be a dict {{class id: 'name, other name'}}, got {type(id2label).__name__}")
    try:
        # JSON object keys are strings: store "id" -> "names" so that save/load round-trips unchanged.
        stored = {str(int(key)): str(value) for key, value in id2label.items()}
    except (TypeError, ValueError):
        raise ValueError(f"id2label keys must be class ids (ints or digit strings), got {list(id2label)!r}") from None
    labels = {name.strip(): int(key) for key, names in stored.items() for name in names.split(",")}
    return stored, dict(sorted(labels.items()))
