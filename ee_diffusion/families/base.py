"""What every engine view of a model shares: reading a call's batch and timesteps, and guidance pairs from tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from .decoder import ExitDecoder


class BackboneAdapter:
    """The engine's view of one model: its blocks, and what a model call tells about its rows.

    Transformers get a `FamilyAdapter` built from their family's declaration (`ee_diffusion.families`); U-Nets get
    `ee_diffusion.unet.UNetAdapter`. Decoding an intermediate block (exits, heads, training) is the `decoder`'s job.
    """

    #: True for models whose blocks run one after another on (B, L, D) tokens, where an exited row parks its image
    #: stream until the model's own head (the sequential engine); False for U-Nets (depth truncation).
    sequential: ClassVar[bool] = True
    #: the model-call argument that carries the noisy sample (B, ...).
    sample_arg: ClassVar[str] = "hidden_states"
    #: what the model's `timestep` argument is multiplied by to give 0-999 timesteps.
    timestep_scale: float = 1.0
    #: True for models called with 1 - t/1000, a timestep that grows along a run (Lumina2): 0-999 is then
    #: timestep_scale x (1 - argument).
    timestep_reversed: bool = False
    #: the model-call argument that carries the timesteps (HiDream's is `timesteps`: `ModelFamily.timestep_arg`)
    timestep_arg: str = "timestep"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def blocks(self) -> list[nn.Module]:
        """The blocks the engine hooks, in execution order."""
        raise NotImplementedError

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def decoder(self) -> ExitDecoder:
        """What applies the model's own output head to an intermediate block (exits, heads, training)."""
        raise NotImplementedError

    def null_class_id(self) -> int | None:
        """The class id the model reserves for "no class" (classifier-free guidance), or None if it has none."""
        return None

    def batch_and_timesteps(self, inputs: dict[str, Any]) -> tuple[int, torch.Tensor]:
        """From the model's call arguments: the batch size B and a (B,) float tensor of per-row 0-999 timesteps."""
        sample = inputs[self.sample_arg]
        batch = sample.shape[0]
        timestep = inputs.get(self.timestep_arg)
        if timestep is None:
            raise ValueError(f"early exit needs the model's `{self.timestep_arg}` argument; it was not given")
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0 or timestep.shape == (1,):
            # One timestep for the whole batch; the stock models broadcast a (1,) timestep too.
            timestep = timestep.reshape(1).expand(batch)
        if timestep.shape != (batch,):
            raise ValueError(
                f"timestep must be a scalar or have shape (1,) or ({batch},), got {tuple(timestep.shape)}"
            )
        return batch, self.schedule_timesteps(timestep)

    def schedule_timesteps(self, timestep: torch.Tensor) -> torch.Tensor:
        """The model's own `timestep` argument -> float 0-999 timesteps, those schedules are written in (and that
        timestep-conditioned heads embed)."""
        timestep = torch.as_tensor(timestep).float()
        if self.timestep_reversed:
            timestep = 1.0 - timestep
        return timestep if self.timestep_scale == 1.0 else timestep * self.timestep_scale

    def is_cfg_pair_batch(self, inputs: dict[str, Any], timesteps: torch.Tensor) -> bool:
        """Whether the batch is [conditional rows; their unconditional partners] (classifier-free guidance).

        Text-to-image pipelines build their guidance batch as `cat([x, x])` with equal timesteps in both halves and
        the negative and positive prompt embeddings in the two halves; no null id marks the unconditional half. One
        host sync.
        """
        sample = inputs[self.sample_arg]
        batch = sample.shape[0]
        if batch % 2:
            return False
        half = batch // 2
        return bool((timesteps[:half] == timesteps[half:]).all() & (sample[:half] == sample[half:]).all())

    def check_call(self, inputs: dict[str, Any]) -> None:
        """Raise `ValueError` for model-call arguments that early exit cannot honour (exits on only)."""
