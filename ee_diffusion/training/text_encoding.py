"""Prompts of a text-to-image pipeline, encoded once with the pipeline's own text encoders for training.

`encode_prompts(pipe, prompts)` returns the transformer's keyword inputs for those prompts, named as the
transformer's forward (and `decoder.exit_outputs`) takes them, one row per prompt:

- `PixArtAlphaPipeline`: `encoder_hidden_states` (B, L, caption_channels) and `encoder_attention_mask` (B, L),
  T5 tokens padded to `max_sequence_length`;
- `StableDiffusion3Pipeline`: `encoder_hidden_states` (B, L_clip + L_t5, joint_attention_dim) and
  `pooled_projections` (B, pooled_projection_dim).

`null_prompt` encodes the empty prompt the same way: the pipeline's own unconditional input for classifier-free
guidance, which guidance dropout swaps in during training. `check_text_shapes` refuses encoders whose outputs
the transformer cannot take, before anything is encoded or cached.

```py
>>> from ee_diffusion.testing import tiny_pipeline
>>> pipe = tiny_pipeline("sd3")
>>> out = encode_prompts(pipe, ["a red cat", "a dog"], max_sequence_length=8)
>>> {k: tuple(v.shape) for k, v in out.items()}
{'encoder_hidden_states': (2, 16, 16), 'pooled_projections': (2, 8)}
>>> check_text_shapes(pipe.transformer, null_prompt(pipe, max_sequence_length=8))

```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

#: The text-conditioned pipeline classes training supports, with their default prompt length in tokens.
TEXT_PIPELINES = {"PixArtAlphaPipeline": 120, "StableDiffusion3Pipeline": 256}


def _pipeline_name(pipe: Any) -> str:
    name = type(pipe).__name__
    if name not in TEXT_PIPELINES:
        raise ValueError(f"prompts are encoded for {sorted(TEXT_PIPELINES)}, got a {name}")
    return name


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: Sequence[str], max_sequence_length: int | None = None,
                   device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """The transformer's text inputs for `prompts` (module docstring), float32 on the CPU, one row per prompt.

    `max_sequence_length`: T5 tokens (None: the pipeline's default, 120 for PixArt, 256 for SD3).
    """
    name = _pipeline_name(pipe)
    prompts = list(prompts)
    length = TEXT_PIPELINES[name] if max_sequence_length is None else max_sequence_length
    if name == "PixArtAlphaPipeline":
        # Captions are used as written: `clean_caption` would need bs4 and ftfy and changes the text.
        embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                                clean_caption=False, max_sequence_length=length)
        return {"encoder_hidden_states": embeds.float().cpu(), "encoder_attention_mask": mask.float().cpu()}
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device,
                                              do_classifier_free_guidance=False, max_sequence_length=length)
    return {"encoder_hidden_states": embeds.float().cpu(), "pooled_projections": pooled.float().cpu()}


def null_prompt(pipe: Any, max_sequence_length: int | None = None,
                device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """The empty prompt's inputs (each with one row): what the pipeline feeds the unconditional half of a
    guided batch (its default `negative_prompt=""`)."""
    return encode_prompts(pipe, [""], max_sequence_length, device)


def check_text_shapes(transformer: nn.Module, encoded: dict[str, torch.Tensor]) -> None:
    """Raise a `ValueError` naming the received and the expected feature sizes when the encoded prompts do not
    fit `transformer` (a PixArt or SD3 transformer)."""
    config = transformer.config
    expected = {"encoder_hidden_states": getattr(config, "caption_channels", None)
                or getattr(config, "joint_attention_dim", None)}
    if "pooled_projections" in encoded:
        expected["pooled_projections"] = config.pooled_projection_dim
    wrong = [f"{key} has {encoded[key].shape[-1]} features, the transformer takes {size}"
             for key, size in expected.items() if encoded[key].shape[-1] != size]
    if wrong:
        raise ValueError(f"the text encoders' outputs do not fit this {type(transformer).__name__}: "
                         + "; ".join(wrong) + " (text encoders and transformer from different models?)")
