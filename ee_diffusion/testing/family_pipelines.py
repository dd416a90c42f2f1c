"""Tiny complete stock pipelines of the newer families (VAE, tokenizers, text encoders, scheduler), no downloads.

`tiny_family_pipeline(name)` builds the stock diffusers pipeline of one of `FAMILY_PIPELINES` around the family's
tiny stand-in (`ee_diffusion.testing.families`), with every other component random, tiny and built in-process, so
that a test or an example runs the pipeline's own `__call__` - its text encoding, its guidance, its sampling loop
and its decoding - in well under a second on a CPU. Each pipeline's VAE has the latent channels, spatial and
temporal compression its transformer's patching expects; `TINY_CALLS[name]` is a call of each at its smallest
size (the pixel size its checks accept, a short text sequence). Flux, Chroma and Qwen-Image built here also make
that size when a call gives none (`default_sample_size`, which the pipeline does not save: a reloaded folder is
back at 256 pixels); Lumina2's too, and its reloaded folder as well (the pipeline reads the transformer's
`sample_size`). Every pipeline folder round-trips through `save_pretrained` / `from_pretrained`.

Every family of `ee_diffusion.families` but DiT, PixArt and SD3 (`testing.pipelines`) has one here; none was left
out. How their stock calls run the model, which the caches see: Flux (with `true_cfg_scale` and a negative prompt),
Qwen-Image (the same), Wan, CogView4 and HunyuanVideo (`true_cfg_scale`) call it once per guidance branch inside
`cache_context("cond")` / `("uncond")`; CogVideoX, Sana, LTX, AuraFlow, HunyuanDiT and HiDream call it once on the
batch of both branches; Chroma and Lumina2 call it once per branch with no cache context at all.

The prompts of the chat-template text encoders (Qwen-Image's Qwen2.5-VL, HunyuanVideo's Llama) are read by a
word-level tokenizer whose split gives the pipelines' templates exactly the token counts the pipelines crop
(34 and 95), so the prompt's own tokens are what reaches the transformer, as with the real tokenizers.

```py
>>> pipe = tiny_family_pipeline("wan2.2")
>>> type(pipe).__name__, type(pipe.transformer_2).__name__, pipe.config.boundary_ratio
('WanPipeline', 'WanTransformer3DModel', 0.875)

```
"""

from __future__ import annotations

from typing import Any

import torch

from .families import (
    tiny_auraflow,
    tiny_chroma,
    tiny_cogvideox,
    tiny_cogview4,
    tiny_flux,
    tiny_hunyuanvideo,
    tiny_ltx,
    tiny_qwenimage,
    tiny_sana,
    tiny_wan,
)
from .hidream import tiny_hidream_pipeline
from .hunyuandit import tiny_hunyuandit_pipeline
from .lumina2 import tiny_lumina2_pipeline
from .models import _randomise
from .pipelines import tiny_clip, tiny_t5, tiny_tokenizer, tiny_vae

FAMILY_PIPELINES = ("flux", "chroma", "qwenimage", "wan", "wan2.2", "cogvideox", "hunyuanvideo", "sana", "cogview4",
                    "ltx", "auraflow", "hunyuandit", "hidream", "lumina2")

#: Every pipeline's smallest call: its pixel size (and frames for video), and a short text sequence where the
#: pipeline's default (226 to 1024 tokens) would dominate the run. CogVideoX's transformer holds its default 226.
TINY_CALLS: dict[str, dict[str, Any]] = {
    "flux": {"height": 16, "width": 16, "max_sequence_length": 8},
    "chroma": {"height": 16, "width": 16, "max_sequence_length": 8},
    "qwenimage": {"height": 16, "width": 16, "max_sequence_length": 8},
    "wan": {"height": 16, "width": 16, "num_frames": 3, "max_sequence_length": 8},
    "wan2.2": {"height": 16, "width": 16, "num_frames": 3, "max_sequence_length": 8},
    "cogvideox": {"height": 16, "width": 16, "num_frames": 5},
    "hunyuanvideo": {"height": 32, "width": 32, "num_frames": 5, "max_sequence_length": 8},
    "sana": {"height": 32, "width": 32, "max_sequence_length": 8, "use_resolution_binning": False,
             "complex_human_instruction": None},
    "cogview4": {"height": 16, "width": 16, "max_sequence_length": 16},
    "ltx": {"height": 32, "width": 32, "num_frames": 3, "max_sequence_length": 8},
    "auraflow": {"height": 16, "width": 16, "max_sequence_length": 8},
    "hunyuandit": {"height": 64, "width": 64, "use_resolution_binning": False},  # text: BERT 77, T5 256 tokens
    "hidream": {"height": 16, "width": 16, "max_sequence_length": 8},
    "lumina2": {"height": 32, "width": 32, "max_sequence_length": 40},  # the system prompt's 30 tokens, the prompt
}

#: The chat-template words the tiny chat tokenizer knows besides `tiny_tokenizer`'s (every other word is `<unk>`).
_CHAT_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def _chat_tokenizer() -> Any:
    """A word-level fast tokenizer for the chat-template text encoders: `tiny_tokenizer`'s words, the chat markers
    as special tokens, and every newline, punctuation mark and word a token of its own (the count the pipelines'
    crops expect: Qwen-Image drops 34 template tokens, HunyuanVideo 95)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = tiny_tokenizer().get_vocab()  # word -> id, "<pad>" 0
    words = sorted(vocab, key=vocab.get) + ["\n", *_CHAT_SPECIALS]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(" +"), "removed"), pre_tokenizers.Split(Regex(r"\n|[^\w\s]+"), "isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=list(_CHAT_SPECIALS))


def _vocab_size(tokenizer: Any) -> int:
    return len(tokenizer.get_vocab())


def _random(model: torch.nn.Module, seed: int, scale: float) -> Any:
    """`model` with every parameter drawn from N(0, scale^2) by `seed` (reproducible, unlike a default init), in
    eval mode. A VAE's `scale` is the one whose images vary with the latents without saturating (std about 0.05-0.1
    in [0, 1]; deeper or wider decoders need less)."""
    _randomise(model, seed, scale=scale)
    return model.eval()


def _small_default(pipe: Any) -> Any:
    """`pipe` whose call without a size makes a 16-pixel image (8 latents a side), not the 1024-pixel default of
    the real checkpoints (`default_sample_size`, an attribute the pipeline sets itself and never saves)."""
    pipe.default_sample_size = 8
    return pipe


def _flux(seed: int) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    # Flux packs 2x2 latent patches: 4 VAE channels -> 16 transformer channels. Text: T5 (16) per token, the CLIP
    # pooled output (8) per prompt. The pipeline un-shifts latents by the VAE's shift_factor, so it needs one.
    return _small_default(FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(shift_factor=0.1, seed=seed + 1),
        text_encoder=tiny_clip(projection=False, seed=seed + 2), tokenizer=tiny_tokenizer(clip=True),
        text_encoder_2=tiny_t5(16, seed=seed + 3), tokenizer_2=tiny_tokenizer(),
        transformer=tiny_flux(in_channels=16, seed=seed)))


def _chroma(seed: int) -> Any:
    from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler

    return _small_default(ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(shift_factor=0.1, seed=seed + 1),
        text_encoder=tiny_t5(16, seed=seed + 3), tokenizer=tiny_tokenizer(),
        transformer=tiny_chroma(in_channels=16, seed=seed)))


def _qwenimage(seed: int) -> Any:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = _chat_tokenizer()
    # The pipeline reads the last hidden state of the language model (16 features per token); the vision tower
    # is never called on text, so one tiny layer stands for it. mrope: the 4 rotary frequencies of the 8-wide heads
    # in 3 sections (time, height, width).
    text = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(vocab_size=_vocab_size(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, bos_token_id=None,
                         eos_token_id=None, pad_token_id=0),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           fullatt_block_indexes=[0], patch_size=2, spatial_merge_size=1, temporal_patch_size=1)))
    # One spatial downsampling (vae_scale_factor 2), 4 latent channels: 2x2 patches give the transformer's 16.
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    return _small_default(QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_random(vae, seed + 1, 0.3),
        text_encoder=_random(text, seed + 2, 0.2), tokenizer=tokenizer,
        transformer=tiny_qwenimage(in_channels=16, seed=seed)))


def _umt5(seed: int) -> Any:
    """A random one-layer `UMT5EncoderModel` (width 16) over `tiny_tokenizer`'s vocabulary."""
    from transformers import UMT5Config, UMT5EncoderModel

    return _random(UMT5EncoderModel(UMT5Config(vocab_size=20, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                               pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)), seed, 0.2)


def _wan(seed: int, two_stage: bool = False) -> Any:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    # One downsampling in space and time: 1 + 2k frames <-> 1 + k latent frames, 4 latent channels.
    vae = AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4, scale_factor_temporal=2,
                           scale_factor_spatial=2)
    # Wan 2.2 A14B: a high-noise expert above the boundary timestep (0.875 x 1000), a low-noise one below it.
    second = {"transformer_2": tiny_wan(seed=seed + 5), "boundary_ratio": 0.875} if two_stage else {}
    return WanPipeline(tokenizer=tiny_tokenizer(), text_encoder=_umt5(seed + 2),
                       vae=_random(vae, seed + 1, 0.15), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                       transformer=tiny_wan(seed=seed), **second)


def _cogvideox(seed: int) -> Any:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline

    # Two levels: spatial and temporal compression 2 (the transformer's own table assumes 4 in time and 4x4
    # latents; it recomputes its sin-cos positions for any other grid). The transformer takes exactly the
    # pipeline's default 226 text tokens.
    vae = AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 2, up_block_types=("CogVideoXUpBlock3D",) * 2,
        block_out_channels=(8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=2)
    return CogVideoXPipeline(tokenizer=tiny_tokenizer(), text_encoder=tiny_t5(16, seed=seed + 2),
                             vae=_random(vae, seed + 1, 0.02), transformer=tiny_cogvideox(text_len=226, seed=seed),
                             scheduler=CogVideoXDDIMScheduler(timestep_spacing="trailing"))


def _hunyuanvideo(seed: int) -> Any:
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer = _chat_tokenizer()
    # The pipeline reads the third hidden state from the end: 2 layers leave the embeddings there.
    llama = LlamaModel(LlamaConfig(vocab_size=_vocab_size(tokenizer), hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                   max_position_embeddings=256, pad_token_id=0, bos_token_id=None,
                                   eos_token_id=None))
    # The pipeline pads CLIP prompts to 77 tokens whatever the tokenizer says: 77 positions.
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=20, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=77, pad_token_id=0,
                                        bos_token_id=3, eos_token_id=2))
    # The VAE's smallest compression: 8 in space (3 of its 4 levels), 4 in time; 4 latent channels. The scheduler's
    # shift is the released checkpoint's.
    vae = AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8,) * 4, layers_per_block=1,
                                    norm_num_groups=4)
    return HunyuanVideoPipeline(
        text_encoder=_random(llama, seed + 2, 0.2), tokenizer=tokenizer, vae=_random(vae, seed + 1, 0.15),
        transformer=tiny_hunyuanvideo(guidance=True, seed=seed), scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=_random(clip, seed + 3, 0.2), tokenizer_2=tiny_tokenizer(max_length=77, clip=True))


def _sana(seed: int) -> Any:
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline
    from transformers import Gemma2Config, Gemma2Model

    gemma = Gemma2Model(Gemma2Config(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                     max_position_embeddings=512, pad_token_id=0, bos_token_id=None,
                                     eos_token_id=None))
    # Three levels: compression 4, so a 32-pixel image (the pipeline's smallest) is the transformer's 8x8 latent.
    vae = AutoencoderDC(latent_channels=4, attention_head_dim=4, encoder_block_types="ResBlock",
                        decoder_block_types="ResBlock", encoder_block_out_channels=(8,) * 3,
                        decoder_block_out_channels=(8,) * 3, encoder_layers_per_block=(1,) * 3,
                        decoder_layers_per_block=(1,) * 3, encoder_qkv_multiscales=((),) * 3,
                        decoder_qkv_multiscales=((),) * 3, decoder_norm_types="batch_norm",
                        decoder_act_fns="silu", scaling_factor=0.41407)
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return SanaPipeline(tokenizer=tiny_tokenizer(), text_encoder=_random(gemma, seed + 2, 0.2),
                        vae=_random(vae, seed + 1, 0.15), transformer=tiny_sana(seed=seed), scheduler=scheduler)


def _cogview4(seed: int) -> Any:
    from diffusers import CogView4Pipeline, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    # The pipeline reads the second hidden state from the end: one layer leaves the embeddings there.
    glm = GlmModel(GlmConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                             pad_token_id=0))
    # CogView4's own scheduler settings: the timestep shift follows the image's token count, linearly.
    scheduler = FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
                                                use_dynamic_shifting=True, time_shift_type="linear")
    return CogView4Pipeline(tokenizer=tiny_tokenizer(), text_encoder=_random(glm, seed + 2, 0.2),
                            vae=tiny_vae(seed=seed + 1), transformer=tiny_cogview4(seed=seed), scheduler=scheduler)


def _ltx(seed: int) -> Any:
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline

    # Patches of 4 then one level: compression 8 in space, 2 in time; the transformer's 8 latent channels.
    vae = AutoencoderKLLTXVideo(
        latent_channels=8, block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        down_block_types=("LTXVideoDownBlock3D",) * 2, layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        spatio_temporal_scaling=(True, False), decoder_spatio_temporal_scaling=(True, False),
        decoder_inject_noise=(False, False, False), downsample_type=("conv", "conv"), upsample_residual=(False, False),
        upsample_factor=(1, 1), patch_size=4, patch_size_t=1)
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_random(vae, seed + 1, 0.03),
                       text_encoder=tiny_t5(16, seed=seed + 2), tokenizer=tiny_tokenizer(),
                       transformer=tiny_ltx(seed=seed))


def _auraflow(seed: int) -> Any:
    from diffusers import AuraFlowPipeline, FlowMatchEulerDiscreteScheduler

    return AuraFlowPipeline(tokenizer=tiny_tokenizer(), text_encoder=_umt5(seed + 2), vae=tiny_vae(seed=seed + 1),
                            transformer=tiny_auraflow(seed=seed), scheduler=FlowMatchEulerDiscreteScheduler())


_BUILDERS = {"flux": _flux, "chroma": _chroma, "qwenimage": _qwenimage, "wan": _wan,
             "wan2.2": lambda seed: _wan(seed, two_stage=True), "cogvideox": _cogvideox,
             "hunyuanvideo": _hunyuanvideo, "sana": _sana, "cogview4": _cogview4, "ltx": _ltx, "auraflow": _auraflow,
             "hunyuandit": tiny_hunyuandit_pipeline, "hidream": tiny_hidream_pipeline, "lumina2": tiny_lumina2_pipeline}


def tiny_family_pipeline(name: str, seed: int = 0) -> Any:
    """The stock diffusers pipeline of family `name` (one of `FAMILY_PIPELINES`) with tiny random components.

    "flux" (`FluxPipeline`: CLIP and T5), "chroma" (`ChromaPipeline`: T5), "qwenimage" (`QwenImagePipeline`:
    Qwen2.5-VL), "wan" and "wan2.2" (`WanPipeline`: UMT5; "wan2.2" with `transformer_2` and `boundary_ratio`
    0.875), "cogvideox" (`CogVideoXPipeline`: T5), "hunyuanvideo" (`HunyuanVideoPipeline`: Llama and CLIP), "sana"
    (`SanaPipeline`: Gemma 2, a deep-compression VAE), "cogview4" (`CogView4Pipeline`: GLM), "ltx" (`LTXPipeline`:
    T5), "auraflow" (`AuraFlowPipeline`: UMT5), "hunyuandit" (`HunyuanDiTPipeline`: BERT and T5, see
    `testing.hunyuandit`), "hidream" (`HiDreamImagePipeline`: two CLIPs, T5 and Llama, see `testing.hidream`), "lumina2"
    (`Lumina2Pipeline`: Gemma 2, see `testing.lumina2`).
    Call it with `TINY_CALLS[name]` (sizes), a prompt and a few steps.

    ```py
    >>> pipe = tiny_family_pipeline("flux")
    >>> pipe.set_progress_bar_config(disable=True)
    >>> out = pipe("a red cat", num_inference_steps=2, output_type="np", **TINY_CALLS["flux"])
    >>> out.images.shape
    (1, 16, 16, 3)

    ```
    """
    if name not in _BUILDERS:
        raise ValueError(f"name must be one of {FAMILY_PIPELINES}, got {name!r}")
    return _BUILDERS[name](seed)
