"""Tiny complete stock pipelines (VAE, tokenizers, text encoders) for the commands' end-to-end tests."""

from __future__ import annotations

from typing import Any

import torch

from .models import _randomise, tiny_dit, tiny_pixart, tiny_sd3, tiny_unet, tiny_unet_condition


TINY_PIPELINES = ("dit", "pixart", "sd3", "sd", "ddpm")


def tiny_vae(latent_channels: int = 4, scaling_factor: float = 0.18215, shift_factor: float | None = None,
             seed: int = 0) -> torch.nn.Module:
    """A random `AutoencoderKL` with two levels (downsampling factor 2): an 8x8 latent decodes to 16x16 RGB.

    `scaling_factor` and `shift_factor` are the config fields pipelines scale latents with (SD3 needs a shift).

    ```py
    >>> vae = tiny_vae()
    >>> vae.decode(torch.zeros(1, 4, 8, 8)).sample.shape
    torch.Size([1, 3, 16, 16])

    ```
    """
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )
    _randomise(vae, seed, scale=0.1)
    return vae.eval()


def tiny_tokenizer(max_length: int = 8, clip: bool = False) -> Any:
    """A word-level fast tokenizer built in-process (no vocabulary file, no download): lower-case words of the
    tiny vocabulary below map to their ids, every other word to `<unk>`; `clip=True` adds CLIP's start and end
    tokens. `model_max_length` is `max_length`, which the text-to-image pipelines pad to.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "</s>", "<s>", "a", "an", "the", "of", "red", "blue", "green", "cat", "dog", "car",
             "tree", "house", "photo", "painting", "small", "big"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if clip:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 3), ("</s>", 2)])
    else:  # T5: an end-of-sequence token after the text
        tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_length, pad_token="<pad>", unk_token="<unk>",
        eos_token="</s>", bos_token="<s>" if clip else None,
    )


def tiny_t5(dim: int = 16, seed: int = 0) -> torch.nn.Module:
    """A random one-layer `T5EncoderModel` with `d_model=dim` over `tiny_tokenizer`'s vocabulary."""
    from transformers import T5Config, T5EncoderModel

    model = T5EncoderModel(T5Config(vocab_size=20, d_model=dim, d_kv=8, d_ff=2 * dim, num_layers=1, num_heads=2,
                                    pad_token_id=0, eos_token_id=2, decoder_start_token_id=0))
    _randomise(model, seed, scale=0.2)
    return model.eval()


def tiny_clip(dim: int = 8, projection_dim: int = 4, projection: bool = True, positions: int = 8, seed: int = 0
              ) -> torch.nn.Module:
    """A random two-layer CLIP text encoder (`CLIPTextModelWithProjection`, or `CLIPTextModel` without
    `projection`) over `tiny_tokenizer(clip=True)`'s vocabulary, `positions` positions."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=20, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=positions, projection_dim=projection_dim,
                            pad_token_id=0, bos_token_id=3, eos_token_id=2)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    _randomise(model, seed, scale=0.2)
    return model.eval()


def tiny_pipeline(kind: str, num_layers: int = 4, seed: int = 0) -> Any:
    """A stock diffusers pipeline with tiny random components, complete (VAE, text encoders, tokenizers), so
    that it samples from class ids or prompts like the real one and round-trips through `save_pretrained`.

    `kind`: "dit" (`DiTPipeline`: latent 4x8x8, 1000 classes, learned variance, `id2label` with names),
    "pixart" (`PixArtAlphaPipeline`, T5), "sd3" (`StableDiffusion3Pipeline`, two CLIPs and T5), "sd"
    (`StableDiffusionPipeline`, CLIP) or "ddpm" (`DDPMPipeline`, pixel-space unconditional U-Net). Latent
    pipelines decode 8x8 latents to 16x16 RGB images.

    ```py
    >>> pipe = tiny_pipeline("pixart")
    >>> type(pipe).__name__, pipe.vae_scale_factor
    ('PixArtAlphaPipeline', 2)

    ```
    """
    from diffusers import (
        DDIMScheduler, DDPMPipeline, DiTPipeline, FlowMatchEulerDiscreteScheduler, PixArtAlphaPipeline,
        StableDiffusion3Pipeline, StableDiffusionPipeline,
    )

    if kind not in TINY_PIPELINES:
        raise ValueError(f"kind must be one of {TINY_PIPELINES}, got {kind!r}")
    if kind == "ddpm":
        return DDPMPipeline(unet=tiny_unet(in_channels=3, seed=seed), scheduler=DDIMScheduler())
    vae = tiny_vae(seed=seed + 1, **({"scaling_factor": 1.5305, "shift_factor": 0.0609} if kind == "sd3" else {}))
    if kind == "dit":
        model = tiny_dit(num_layers=num_layers, in_channels=4, num_classes=1000, width=32, learn_sigma=True,
                         seed=seed)
        names = {0: "tench, Tinca tinca", 1: "goldfish", 2: "great white shark, white shark"}
        pipe = DiTPipeline(transformer=model, vae=vae, scheduler=DDIMScheduler(clip_sample=False), id2label=names)
        # A hub DiT folder lists its class names in model_index.json; the pipeline does not save them itself.
        pipe.register_to_config(id2label=names)
        return pipe
    if kind == "pixart":
        return PixArtAlphaPipeline(
            tokenizer=tiny_tokenizer(max_length=8), text_encoder=tiny_t5(16, seed=seed + 2), vae=vae,
            transformer=tiny_pixart(num_layers=num_layers, seed=seed), scheduler=DDIMScheduler(clip_sample=False))
    if kind == "sd":
        return StableDiffusionPipeline(
            vae=vae, text_encoder=tiny_clip(dim=16, projection=False, seed=seed + 2),
            tokenizer=tiny_tokenizer(clip=True), unet=tiny_unet_condition(seed=seed),
            scheduler=DDIMScheduler(clip_sample=False), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    # SD3 joins the two CLIPs' hidden states (8 + 8 features) and pads them to the T5 width (16); the pooled
    # embedding is both projections side by side (4 + 4 = the transformer's pooled_projection_dim 8).
    return StableDiffusion3Pipeline(
        transformer=tiny_sd3(num_layers=num_layers, seed=seed), scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae, text_encoder=tiny_clip(seed=seed + 2), tokenizer=tiny_tokenizer(clip=True),
        text_encoder_2=tiny_clip(seed=seed + 3), tokenizer_2=tiny_tokenizer(clip=True),
        text_encoder_3=tiny_t5(16, seed=seed + 4), tokenizer_3=tiny_tokenizer(max_length=8))
