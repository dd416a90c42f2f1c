"""Forecast steps: what a block returns when a per-row forecast stands in for all of its expensive sub-modules.

On such a call a block's norms and modulated inputs feed only the sub-modules being forecast, so their work is
wasted; a family's `BlockStack.forecast_step` skips it. It computes only what the forecasts do not replace - the
adaLN gates from the current conditioning and the residual additions - with the block's own operations in the
block's own order, so its output equals the block's forward with forecast sub-module outputs bit for bit
(`tests/test_block_forecast.py`). A step returns None for a configuration it does not know (the block then runs as
it is, its hooked sub-modules returning the forecasts). `memo` lives for one model call: what every block of the call
computes alike (a parameter-free timestep projection) is computed once, which matters at batch 1, where a forecast
call is bound by its count of operations.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.embeddings import CombinedTimestepLabelEmbeddings, Timesteps
from torch import nn


def basic_block_forecast_step(block: nn.Module, inputs: dict[str, Any], forecasts: dict[str, torch.Tensor],
                              memo: dict) -> torch.Tensor | None:
    """diffusers' `BasicTransformerBlock` with adaLN-Zero (DiT: gates from the block's own (t, y) embedding) or
    adaLN-single (PixArt: gates from the per-row modulation `timestep` (B, 6D) and the block's `scale_shift_table`):
    h + gate_msa * attn1 [+ attn2] + gate_mlp * ff, the sub-module outputs (B, L, D) forecast.

    None for any other norm, positional embedding, GLIGEN input or 4-D stream, a sub-module without a forecast, or a
    block parameter on another device than the stream (offloaded)."""
    hidden = inputs["hidden_states"]  # (B, L, D)
    attn2 = getattr(block, "attn2", None)
    kwargs = inputs.get("cross_attention_kwargs") or {}
    if (hidden.ndim != 3 or getattr(block, "pos_embed", None) is not None or "gligen" in kwargs
            or "attn1" not in forecasts or "ff" not in forecasts or (attn2 is not None and "attn2" not in forecasts)):
        return None
    norm_type, batch = getattr(block, "norm_type", None), hidden.shape[0]
    if norm_type == "ada_norm_zero":
        norm = block.norm1
        if norm.emb is None:
            return None
        condition = _conditioning(norm.emb, inputs["timestep"], inputs.get("class_labels"), hidden.dtype, memo)
        emb = norm.linear(norm.silu(condition))
        gate_msa, gate_mlp = emb.chunk(6, dim=1)[2::3]  # (B, D) each
        gate_msa, gate_mlp = gate_msa.unsqueeze(1), gate_mlp.unsqueeze(1)
    elif norm_type == "ada_norm_single":
        if block.scale_shift_table.device != hidden.device:
            return None  # a parameter an offloading hook on the block itself would have moved: run the block
        modulation = block.scale_shift_table[None] + inputs["timestep"].reshape(batch, 6, -1)  # (B, 6, D)
        gate_msa, gate_mlp = modulation.chunk(6, dim=1)[2::3]  # (B, 1, D) each
    else:
        return None
    hidden = gate_msa * forecasts["attn1"] + hidden
    if attn2 is not None:
        hidden = forecasts["attn2"] + hidden
    return gate_mlp * forecasts["ff"] + hidden


def _conditioning(embedding: nn.Module, timestep: torch.Tensor, labels: torch.Tensor | None, dtype: torch.dtype,
                  memo: dict) -> torch.Tensor:
    """`embedding(timestep, labels, hidden_dtype=dtype)` (B, D), its sinusoidal projection shared through `memo` by
    every block of the call that projects this timestep tensor alike (DiT embeds (t, y) in every block)."""
    proj = getattr(embedding, "time_proj", None)
    if type(embedding) is not CombinedTimestepLabelEmbeddings or type(proj) is not Timesteps:
        return embedding(timestep, labels, hidden_dtype=dtype)
    key = (id(timestep), proj.num_channels, proj.flip_sin_to_cos, proj.downscale_freq_shift, proj.scale)
    if key not in memo:
        memo[key] = proj(timestep)  # (B, 256) no parameters: the same for every block
    return embedding.timestep_embedder(memo[key].to(dtype=dtype)) + embedding.class_embedder(labels)
