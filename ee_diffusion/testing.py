"""Tiny real diffusers models for tests, examples and the random-weight benchmarks (no downloads)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from diffusers import (
    DiTTransformer2DModel,
    FluxTransformer2DModel,
    PixArtTransformer2DModel,
    QwenImageTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
    UNet2DModel,
    WanTransformer3DModel,
)

if TYPE_CHECKING:
    from .unet import UNetExitBridges


def tiny_dit(
    num_layers: int = 6,
    sample_size: int = 8,
    in_channels: int = 1,
    num_classes: int = 10,
    width: int = 32,
    heads: int = 2,
    learn_sigma: bool = False,
    seed: int = 0,
) -> DiTTransformer2DModel:
    """A randomly initialised class-conditional DiT in eval mode, small enough for unit tests.

    The adaLN-zero projections are re-initialised to small random values (diffusers starts them at zero,
    which would make every block the identity and every exit look perfect).

    ```py
    >>> model = tiny_dit(num_layers=4)
    >>> len(model.transformer_blocks), model.training
    (4, False)

    ```
    """
    if width % heads:
        raise ValueError(f"width must be divisible by heads, got width={width}, heads={heads}")
    generator = torch.Generator().manual_seed(seed)
    model = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=width // heads,
        in_channels=in_channels,
        out_channels=2 * in_channels if learn_sigma else in_channels,
        num_layers=num_layers,
        sample_size=sample_size,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
        norm_num_groups=1,
    )
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    for block in model.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    return model.eval()


def _randomise(model: torch.nn.Module, seed: int, scale: float = 0.2) -> None:
    """Overwrite every parameter with N(0, scale^2): no zero-initialised gate makes a block the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * scale)


def tiny_pixart(
    num_layers: int = 4, sample_size: int = 8, in_channels: int = 4, caption_channels: int = 16, seed: int = 0
) -> PixArtTransformer2DModel:
    """A randomly initialised PixArt transformer (width 16, 2 heads, patch 2) in eval mode.

    Text embeddings have `caption_channels` features; the output has `2 * in_channels` channels (learned
    variance, as PixArt-alpha).

    ```py
    >>> model = tiny_pixart(num_layers=2)
    >>> len(model.transformer_blocks), model.config.out_channels
    (2, 8)

    ```
    """
    model = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=in_channels,
        out_channels=2 * in_channels,
        num_layers=num_layers,
        norm_num_groups=1,
        cross_attention_dim=16,
        sample_size=sample_size,
        patch_size=2,
        caption_channels=caption_channels,
        use_additional_conditions=False,
    )
    _randomise(model, seed)
    return model.eval()


def tiny_sd3(
    num_layers: int = 4, sample_size: int = 8, in_channels: int = 4, text_dim: int = 16, pooled_dim: int = 8,
    seed: int = 0,
) -> SD3Transformer2DModel:
    """A randomly initialised SD3 MMDiT (width 16, 2 heads, patch 2) in eval mode.

    Text tokens have `text_dim` features (`joint_attention_dim`), the pooled text embedding `pooled_dim`.

    ```py
    >>> model = tiny_sd3(num_layers=2)
    >>> [block.context_pre_only for block in model.transformer_blocks]
    [False, True]

    ```
    """
    model = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=in_channels,
        num_layers=num_layers,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=text_dim,
        caption_projection_dim=16,
        pooled_projection_dim=pooled_dim,
        out_channels=in_channels,
        pos_embed_max_size=sample_size,
    )
    _randomise(model, seed)
    return model.eval()


def tiny_flux(num_layers: int = 2, num_single_layers: int = 2, in_channels: int = 4, text_dim: int = 16,
              pooled_dim: int = 8, guidance: bool = False, seed: int = 0) -> FluxTransformer2DModel:
    """A randomly initialised FLUX.1 transformer (width 16, 2 heads, rotary axes 2+2+4) in eval mode: `num_layers`
    double-stream blocks, then `num_single_layers` single-stream blocks. `guidance=True`: guidance-distilled (dev).

    ```py
    >>> model = tiny_flux()
    >>> len(model.transformer_blocks), len(model.single_transformer_blocks)
    (2, 2)

    ```
    """
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=text_dim, pooled_projection_dim=pooled_dim,
        guidance_embeds=guidance, axes_dims_rope=(2, 2, 4),
    )
    _randomise(model, seed)
    return model.eval()


def flux_inputs(model: FluxTransformer2DModel, batch: int = 4, side: int = 4, text_len: int = 5,
                seed: int = 1) -> dict[str, Any]:
    """Keyword inputs of one call of `model`: `side` x `side` packed latent tokens and `text_len` text tokens per row,
    0-1 timesteps spread over the batch, and the position ids FluxPipeline builds (2-D, shared by every row)."""
    g = torch.Generator().manual_seed(seed)
    config = model.config
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    inputs = {
        "hidden_states": torch.randn(batch, side * side, config.in_channels, generator=g),
        "timestep": torch.linspace(0.01, 0.9, batch),
        "encoder_hidden_states": torch.randn(batch, text_len, config.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, config.pooled_projection_dim, generator=g),
        "txt_ids": torch.zeros(text_len, 3),
        "img_ids": torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float(),
    }
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 3.5)
    return inputs


def tiny_qwenimage(num_layers: int = 3, in_channels: int = 16, text_dim: int = 16, seed: int = 0
                   ) -> QwenImageTransformer2DModel:
    """A randomly initialised Qwen-Image MMDiT (width 16, 2 heads, rotary axes 2+2+4) in eval mode.

    ```py
    >>> len(tiny_qwenimage().transformer_blocks)
    3

    ```
    """
    model = QwenImageTransformer2DModel(
        patch_size=2, in_channels=in_channels, out_channels=in_channels // 4, num_layers=num_layers,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=text_dim, axes_dims_rope=(2, 2, 4),
    )
    _randomise(model, seed)
    return model.eval()


def qwenimage_inputs(model: QwenImageTransformer2DModel, batch: int = 4, side: int = 4, text_len: int = 5,
                     seed: int = 1) -> dict[str, Any]:
    """Keyword inputs of one call: `side` x `side` packed tokens per row, a text mask with a padded tail on odd rows,
    0-1 timesteps spread over the batch, and `img_shapes` as QwenImagePipeline passes them."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[1::2, -2:] = 0
    return {
        "hidden_states": torch.randn(batch, side * side, model.config.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(batch, text_len, model.config.joint_attention_dim, generator=g),
        "encoder_hidden_states_mask": mask,
        "timestep": torch.linspace(0.01, 0.9, batch),
        "img_shapes": [[(1, side, side)]] * batch,
    }


def tiny_wan(num_layers: int = 3, in_channels: int = 4, text_dim: int = 16, seed: int = 0) -> WanTransformer3DModel:
    """A randomly initialised Wan 2.1 video DiT (width 16, 2 heads, patch (1, 2, 2)) in eval mode.

    ```py
    >>> len(tiny_wan().blocks)
    3

    ```
    """
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=in_channels,
        out_channels=in_channels, text_dim=text_dim, freq_dim=16, ffn_dim=32, num_layers=num_layers,
        rope_max_seq_len=32,
    )
    _randomise(model, seed)
    return model.eval()


def wan_inputs(model: WanTransformer3DModel, batch: int = 4, frames: int = 2, side: int = 4, text_len: int = 5,
               seed: int = 1) -> dict[str, Any]:
    """Keyword inputs of one call: 5-D latents (B, C, frames, side, side), text, 0-999 timesteps over the batch."""
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, model.config.in_channels, frames, side, side, generator=g),
        "timestep": torch.linspace(10, 900, batch),
        "encoder_hidden_states": torch.randn(batch, text_len, model.config.text_dim, generator=g),
    }


def tiny_unet(
    sample_size: int = 8, in_channels: int = 1, num_class_embeds: int | None = None, seed: int = 0
) -> UNet2DModel:
    """A randomly initialised 3-level `UNet2DModel` (channels 8/16/16, attention on level 1) in eval mode.

    ```py
    >>> model = tiny_unet()
    >>> [type(b).__name__ for b in model.down_blocks]
    ['DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D']

    ```
    """
    model = UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        layers_per_block=1,
        block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
        num_class_embeds=num_class_embeds,
    )
    _randomise(model, seed, scale=0.2)
    return model.eval()


def tiny_unet_condition(
    sample_size: int = 8, in_channels: int = 4, cross_attention_dim: int = 16, seed: int = 0
) -> UNet2DConditionModel:
    """A randomly initialised 3-level text-conditioned `UNet2DConditionModel` (Stable Diffusion layout) in eval mode.

    ```py
    >>> model = tiny_unet_condition()
    >>> [type(b).__name__ for b in model.up_blocks]
    ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D']

    ```
    """
    model = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        layers_per_block=1,
        block_out_channels=(8, 16, 16),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=4,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
    )
    _randomise(model, seed, scale=0.2)
    return model.eval()


def random_bridges(model: torch.nn.Module, seed: int = 1) -> "UNetExitBridges":
    """`UNetExitBridges` for `model` with random (not zero) weights, so that tests see what a bridge adds."""
    from .unet import UNetExitBridges

    bridges = UNetExitBridges.from_model(model)
    _randomise(bridges, seed, scale=0.1)
    return bridges.eval()


# ------------------------------------------------------------------------------------- tiny stock pipelines
#: The stock pipeline classes `tiny_pipeline` builds, by short name.
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


def tiny_clip(dim: int = 8, projection_dim: int = 4, projection: bool = True, seed: int = 0) -> torch.nn.Module:
    """A random two-layer CLIP text encoder (`CLIPTextModelWithProjection`, or `CLIPTextModel` without
    `projection`) over `tiny_tokenizer(clip=True)`'s vocabulary, 8 positions."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=20, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=8, projection_dim=projection_dim,
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
            tokenizer=tiny_tokenizer(clip=True), unet=tiny_unet_condition(seed=seed), scheduler=DDIMScheduler(clip_sample=False),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    # SD3 joins the two CLIPs' hidden states (8 + 8 features) and pads them to the T5 width (16); the pooled
    # embedding is both projections side by side (4 + 4 = the transformer's pooled_projection_dim 8).
    return StableDiffusion3Pipeline(
        transformer=tiny_sd3(num_layers=num_layers, seed=seed), scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae, text_encoder=tiny_clip(seed=seed + 2), tokenizer=tiny_tokenizer(clip=True),
        text_encoder_2=tiny_clip(seed=seed + 3), tokenizer_2=tiny_tokenizer(clip=True),
        text_encoder_3=tiny_t5(16, seed=seed + 4), tokenizer_3=tiny_tokenizer(max_length=8))
