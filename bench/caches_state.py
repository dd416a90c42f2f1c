"""The per-row state of `bench-caches` rows: `exit_state_nbytes` after a few calls, against its formula, for our model
and for DiT-XL/2's hidden states."""

from __future__ import annotations

from typing import Any

import torch

from ee_diffusion.eval.method import Method
from ee_diffusion.hooks import apply_early_exit, exit_state_nbytes, remove_early_exit
from ee_diffusion.schedules import BlockForecast, BlockForecastState, TailCacheState

DIT_XL_TOKENS, DIT_XL_WIDTH = 256, 1152  # DiT-XL/2 at 256 px: 32x32 latents in 2x2 patches, hidden width 1152


def state_memory(pipe: Any, method: Method, batch: int) -> dict[str, Any]:
    """`exit_state_nbytes` after three model calls at `batch` rows, with the formula's value
    (`TailCacheState.bound`) for this model and for DiT-XL/2 hidden states at the same batch, in float32 and
    bfloat16."""
    model = pipe.transformer
    c, h, w = model.config.in_channels, model.config.sample_size, model.config.sample_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, w, generator=generator)
    labels = torch.arange(batch) % pipe.num_classes
    apply_early_exit(model, method.exit_config)
    try:
        tokens = None

        def grab(_module: Any, args: tuple, kwargs: dict) -> None:  # (B, L, D) hidden states into block 0
            nonlocal tokens
            hidden = args[0] if args else kwargs["hidden_states"]
            tokens = tuple(hidden.shape[1:])

        handle = model.transformer_blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            for t in (999, 959, 919):
                model(x, torch.full((batch,), t), labels)
        finally:
            handle.remove()
        measured = exit_state_nbytes(model)
    finally:
        remove_early_exit(model)
    policy = method.exit_config.policy
    length, width = tokens
    blocks = len(model.transformer_blocks)

    def formula(length: int, width: int, element_bytes: int) -> int:
        if isinstance(policy, BlockForecast):  # a DiT block forecasts attn1 and ff: 2 L D values per block
            return BlockForecastState.bound(batch, 2 * blocks * length * width, policy.forecast_order, element_bytes)
        return TailCacheState.bound(batch, length, width, policy.forecast_order, element_bytes,
                                    head_residual=policy.criterion == "residual")

    return {"batch": batch, "measured_bytes": measured, "formula_bytes": formula(length, width, 4),
            "tokens": length, "width": width, "dit_xl_2_float32_bytes": formula(DIT_XL_TOKENS, DIT_XL_WIDTH, 4),
            "dit_xl_2_bfloat16_bytes": formula(DIT_XL_TOKENS, DIT_XL_WIDTH, 2)}
