"""DeeDiff uncertainty estimation modules (UEM): one small head per block (transformers) or level (U-Nets)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ._validation import check_int
from .adapters import get_adapter
from .families.decoder import unpatchify


class UncertaintyHeads(ModelMixin, ConfigMixin):
    """One certainty head per block (transformers) or per level (U-Nets) of a backbone.

    Transformers (`feature_channels=None`): head i maps block i's *detached* hidden state (B, L, D) to a
    per-pixel, per-channel certainty map shaped like the noise prediction (B, C, H, W), values in (0, 1):
    `sigmoid(Linear(D -> p*p*C))` on every patch token, then unpatchified (the DeeDiff authors' code form).
    With `condition_dim > 0` each head also sees the model's timestep embedding, concatenated to every token
    (the paper form `f(w^T [h_i, emb(t)] + b)`).

    U-Nets (`feature_channels=[C_0, ..., C_{N-1}]`): head i reads level i's feature map (B, C_i, H/2^i, W/2^i)
    - the output of down block i, before the part of the network an exit skips - and is
    `sigmoid(Conv1x1(C_i -> C) [+ Linear(emb(t))])`, upsampled (nearest) to (B, C, H, W).

    The heads remember the shape of the model they were made for and refuse any other (`check_model`).

    ```py
    >>> from diffusers import DiTTransformer2DModel
    >>> from ee_diffusion import UncertaintyHeads
    >>> model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, num_layers=2,
    ...                               sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1)
    >>> heads = UncertaintyHeads.from_model(model)
    >>> heads.config.num_blocks, heads.config.out_channels
    (2, 1)

    ```
    """

    @register_to_config
    def __init__(
        self,
        num_blocks: int,
        hidden_dim: int,
        patch_size: int,
        out_channels: int,
        sample_size: int,
        condition_dim: int = 0,
        model_class: str = "DiTTransformer2DModel",
        feature_channels: list[int] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_blocks", num_blocks), ("hidden_dim", hidden_dim), ("patch_size", patch_size),
                            ("out_channels", out_channels), ("sample_size", sample_size)):
            check_int(value, name, 1)
        check_int(condition_dim, "condition_dim", 0, "0 = no timestep input")
        if feature_channels is None:
            self.heads = nn.ModuleList(
                nn.Linear(hidden_dim + condition_dim, patch_size * patch_size * out_channels) for _ in range(num_blocks)
            )
            return
        if (
            not isinstance(feature_channels, (list, tuple))
            or len(feature_channels) != num_blocks
            or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in feature_channels)
        ):
            raise ValueError(
                f"feature_channels must be None (token heads) or a list of {num_blocks} positive integers "
                f"(one per level), got {feature_channels!r}"
            )
        self.heads = nn.ModuleList(nn.Conv2d(c, out_channels, kernel_size=1) for c in feature_channels)
        if condition_dim:
            self.condition_proj = nn.ModuleList(nn.Linear(condition_dim, out_channels) for _ in feature_channels)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "UncertaintyHeads":
        """Load heads saved with `save_pretrained`: safetensors only (never a pickled `.bin`).

        A missing, truncated or corrupted file, or a `config.json` that does not match the weights (e.g. a
        changed `num_blocks`), raises naming the folder - diffusers alone would initialise missing heads at
        random with a warning.
        """
        kwargs.setdefault("use_safetensors", True)
        want_info = kwargs.pop("output_loading_info", False)
        subfolder = kwargs.get("subfolder")
        where = os.path.join(str(pretrained_model_name_or_path), subfolder) if subfolder else str(pretrained_model_name_or_path)
        try:
            heads, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        except (OSError, ValueError) as error:
            raise type(error)(f"cannot load UncertaintyHeads from {where!r}: {error}") from error
        missing, unexpected = info.get("missing_keys") or [], info.get("unexpected_keys") or []
        if missing or unexpected:
            raise ValueError(
                f"the config.json in {where!r} does not match its weights: missing {sorted(missing)[:6]}, unexpected "
                f"{sorted(unexpected)[:6]} (was num_blocks or feature_channels edited?)"
            )
        return (heads, info) if want_info else heads

    @classmethod
    def from_model(cls, model: nn.Module, condition_on_timestep: bool = False) -> "UncertaintyHeads":
        """Make heads shaped for `model` (a supported diffusers model)."""
        decoder = get_adapter(model).decoder
        fields = decoder.head_config()
        heads = cls(
            **fields,
            condition_dim=decoder.embedding_dim() if condition_on_timestep else 0,
            model_class=type(model).__name__,
        )
        param = next(model.parameters())
        heads = heads.to(param.device)
        return heads if param.dtype == torch.float32 else heads.to(param.dtype)

    @property
    def conditioned(self) -> bool:
        return self.config.condition_dim > 0

    def expected_config(self, model: nn.Module) -> dict:
        return {"model_class": type(model).__name__, **get_adapter(model).decoder.head_config()}

    def check_model(self, model: nn.Module) -> None:
        """Raise `ValueError` listing every field where `model` differs from the model these heads fit."""
        expected = self.expected_config(model)
        wrong = [f"{k}: heads have {self.config[k]!r}, model has {v!r}" for k, v in expected.items() if self.config[k] != v]
        if wrong:
            raise ValueError("these uncertainty heads were made for a different model (" + "; ".join(wrong) + ")")

    def forward(
        self, block_index: int, hidden_states: torch.Tensor, condition: torch.Tensor | None = None,
        mean: bool = False, arrange: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Certainty map of block `block_index`: (B, L, D) hidden [+ (B, D_c) condition] -> the map laid out as the
        model's prediction, e.g. (B, C, H, W).

        `arrange` lays the (B, L, p*p*C) token map out as the model's prediction (the family's
        `ExitDecoder.arrange_map`: packed tokens stay tokens, video models unpatchify to their grid); None: DiT's
        square unpatchify to (B, C, H, W). U-Net heads take level `block_index`'s feature map (B, C_i, H_i, W_i)
        instead of tokens. With `mean=True`, returns each row's map averaged over channels and pixels, (B,) float32 -
        what exit policies use at inference; it skips the layout (a permutation, which leaves the mean unchanged).
        """
        if not 0 <= block_index < self.config.num_blocks:
            raise ValueError(f"block_index must be in 0..{self.config.num_blocks - 1}, got {block_index}")
        if not isinstance(hidden_states, torch.Tensor):
            raise TypeError(f"hidden_states must be a torch.Tensor, got {type(hidden_states).__name__}")
        if self.config.feature_channels is None and (
            hidden_states.ndim != 3 or hidden_states.shape[-1] != self.config.hidden_dim
        ):
            raise ValueError(
                f"hidden_states must be (batch, tokens, {self.config.hidden_dim}) for these heads, got "
                f"{tuple(hidden_states.shape)}"
            )
        # Detached: the certainty loss must not train the backbone through the head's input.
        tokens = hidden_states.detach()
        if self.config.feature_channels is not None:
            certainty = self._conv_head(block_index, tokens, condition)
            return certainty.float().mean(dim=(1, 2, 3)) if mean else certainty
        logits = self._token_logits(block_index, tokens, condition)  # (B, L, p*p*C)
        if mean:
            return torch.sigmoid(logits).float().mean(dim=(1, 2))
        if arrange is not None:
            return torch.sigmoid(arrange(logits))
        return torch.sigmoid(unpatchify(logits, self.config.patch_size, self.config.out_channels))

    def _token_logits(
        self, block_index: int, tokens: torch.Tensor, condition: torch.Tensor | None
    ) -> torch.Tensor:
        """(B, L, D) tokens [+ (B, D_c) condition] -> (B, L, p*p*C) logits of head `block_index`."""
        head = self.heads[block_index]
        if not self.conditioned:
            return head(tokens)
        if condition is None:
            raise ValueError("these heads are timestep-conditioned: pass the timestep embedding as `condition`")
        # Linear([h, c]) = W_h h + (W_c c + b): the condition's part once per row, not once per token.
        dim = tokens.shape[-1]
        token_part = F.linear(tokens, head.weight[:, :dim])
        row_part = F.linear(condition.detach().to(tokens.dtype), head.weight[:, dim:], head.bias)  # (B, p*p*C)
        return token_part + row_part[:, None, :]

    def _conv_head(self, block_index: int, feature: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        logits = self.heads[block_index](feature)  # (B, C, H_i, W_i)
        if self.conditioned:
            if condition is None:
                raise ValueError("these heads are timestep-conditioned: pass the timestep embedding as `condition`")
            logits = logits + self.condition_proj[block_index](condition.detach().to(logits.dtype))[:, :, None, None]
        # Level i is at 1/2^i of the sample's resolution; nearest upsampling keeps the per-row mean unchanged.
        if block_index:
            logits = F.interpolate(logits, scale_factor=2**block_index, mode="nearest")
        return torch.sigmoid(logits)
