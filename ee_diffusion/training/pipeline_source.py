"""A local stock pipeline folder as a training source: its denoiser, its encoded images and prompts, its noise.

`DiTPipeline` (class-conditional, DDPM eps, learned variance), `PixArtAlphaPipeline` (T5 prompts, DDPM eps,
learned variance) and `StableDiffusion3Pipeline` (CLIP + T5 prompts, flow matching) are trained through the
same backbone adapters and losses as our own models:

- `prepare_cache` checks every input (pipeline class, VAE and latent sizes, captions, text-encoder widths),
  then encodes the image folder once into a `LatentCache` (`PipelineTrainingConfig` says what is stored):
  the prompts through the pipeline's own text encoders (`encode_prompts`).
- `PipelineSource` gives the trainer each micro-step's model inputs: `x0 = mean + std * n` (a fresh posterior
  sample), noised with the pipeline's own schedule - DDPM `add_noise` with target eps, or flow matching
  `x_t = (1 - sigma) x0 + sigma eps` at timestep `1000 sigma` with target `eps - x0` - and the conditioning,
  where guidance dropout puts the null class or the empty-prompt embedding. It samples previews and saves the
  trained pipeline: the same class, the trained transformer, `exit_heads/` and `exit_config.json`.

```py
>>> import tempfile
>>> from pathlib import Path
>>> from ee_diffusion.testing import tiny_pipeline
>>> root = Path(tempfile.mkdtemp())
>>> tiny_pipeline("dit").save_pretrained(root / "dit")
>>> trainable_pipeline_class(root / "dit")
'DiTPipeline'

```
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_path, atomic_write_json, atomic_write_text, module_fingerprint, read_json_file
from ..config import EarlyExitConfig
from ..heads import UncertaintyHeads
from ..results import EXIT_CONFIG_FILE, HEADS_FOLDER
from ..pipelines.stock import load_pipeline, pipeline_class_name
from .config import PipelineTrainingConfig, TrainConfig
from .image_items import ImageItem, caption_items, class_items, items_digest, load_image
from .latent_cache import LatentCache, build_cache

#: The text-conditioned pipeline classes training supports, with their default prompt length in tokens.
TEXT_PIPELINES = {"PixArtAlphaPipeline": 120, "StableDiffusion3Pipeline": 256}
#: Pipeline classes whose denoiser the trainer fine-tunes or fits heads to.
TRAINABLE_PIPELINES = ("DiTPipeline", *TEXT_PIPELINES)
#: Cached tensors stored in `cache_dtype` (the rest - class ids, attention masks - keep their own dtype).
_FLOAT_KEYS = ("latent_mean", "latent_std", "encoder_hidden_states", "pooled_projections")


def trainable_pipeline_class(folder: str | os.PathLike) -> str:
    """The class of the pipeline folder; a `ValueError` naming it and the trainable classes for any other."""
    name = pipeline_class_name(folder)
    if name not in TRAINABLE_PIPELINES:
        raise ValueError(f"{str(folder)!r} holds a {name}; training on a stock pipeline supports "
                         f"{', '.join(TRAINABLE_PIPELINES)} (our own pipelines train with a 'model' section)")
    return name


# -------------------------------------------------------------------------------------------- the prompts
@torch.no_grad()
def encode_prompts(pipe: Any, prompts: Sequence[str], max_sequence_length: int | None = None,
                   device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """The transformer's text inputs for `prompts` through the pipeline's own text encoders, float32 on the CPU,
    one row per prompt, named as the transformer's forward (and `decoder.exit_outputs`) takes them:

    - `PixArtAlphaPipeline`: `encoder_hidden_states` (B, L, caption_channels) and `encoder_attention_mask`
      (B, L), T5 tokens padded to `max_sequence_length`;
    - `StableDiffusion3Pipeline`: `encoder_hidden_states` (B, L_clip + L_t5, joint_attention_dim) and
      `pooled_projections` (B, pooled_projection_dim).

    `max_sequence_length`: T5 tokens (None: the pipeline's default, 120 for PixArt, 256 for SD3).

    ```py
    >>> from ee_diffusion.testing import tiny_pipeline
    >>> pipe = tiny_pipeline("sd3")
    >>> out = encode_prompts(pipe, ["a red cat", "a dog"], max_sequence_length=8)
    >>> {k: tuple(v.shape) for k, v in out.items()}
    {'encoder_hidden_states': (2, 16, 16), 'pooled_projections': (2, 8)}
    >>> check_text_shapes(pipe.transformer, encode_prompts(pipe, [""], max_sequence_length=8))

    ```
    """
    name = type(pipe).__name__
    if name not in TEXT_PIPELINES:
        raise ValueError(f"prompts are encoded for {sorted(TEXT_PIPELINES)}, got a {name}")
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


def check_text_shapes(transformer: nn.Module, encoded: dict[str, torch.Tensor]) -> None:
    """Raise a `ValueError` naming the received and the expected feature sizes when the encoded prompts do not
    fit `transformer` (a PixArt or SD3 transformer): refused before anything is encoded or cached."""
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


# ---------------------------------------------------------------------------------------------- the cache
def _vae_factor(vae: nn.Module) -> int:
    """The VAE's downsampling factor, 2^(levels - 1): an R x R image encodes to an R / factor latent."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def default_resolution(transformer: nn.Module, vae: nn.Module) -> int:
    return int(transformer.config.sample_size) * _vae_factor(vae)


def check_latent_shape(transformer: nn.Module, vae: nn.Module, resolution: int) -> None:
    """A `ValueError` naming both shapes unless R x R images encode to latents the transformer takes."""
    factor = _vae_factor(vae)
    if resolution % factor:
        raise ValueError(f"resolution {resolution} must be a multiple of the VAE's downsampling factor {factor}")
    side = resolution // factor
    got = (int(vae.config.latent_channels), side, side)
    size = int(transformer.config.sample_size)
    want = (int(transformer.config.in_channels), size, size)
    if got != want:
        raise ValueError(f"images at resolution {resolution} encode to latents {got[0]}x{got[1]}x{got[2]} with this "
                         f"VAE, but the {type(transformer).__name__} takes {want[0]}x{want[1]}x{want[2]}; set "
                         f"resolution to {default_resolution(transformer, vae)} or use the pipeline's own VAE")


def collect_items(config: PipelineTrainingConfig, pipe: Any) -> list[ImageItem]:
    if type(pipe).__name__ == "DiTPipeline":
        if config.captions is not None:
            raise ValueError(f"a DiTPipeline is class-conditional: its classes are the image subfolders, got "
                             f"captions={config.captions!r}")
        return class_items(config.images, pipe)
    return caption_items(config.images, config.captions)


def cache_fingerprint(pipe: Any, config: PipelineTrainingConfig, resolution: int) -> dict[str, Any]:
    """What makes the cached tensors what they are: the pipeline class, the VAE and text encoders (config and
    weights hash), the tokenizers, the resolution, the prompt length and the storage dtype."""
    name = type(pipe).__name__
    fingerprint: dict[str, Any] = {"pipeline_class": name, "resolution": resolution, "cache_dtype": config.cache_dtype,
                                   "vae": module_fingerprint(pipe.vae)}
    if name in TEXT_PIPELINES:
        encoders = [n for n in ("text_encoder", "text_encoder_2", "text_encoder_3") if getattr(pipe, n, None) is not None]
        tokenizers = [n for n in ("tokenizer", "tokenizer_2", "tokenizer_3") if getattr(pipe, n, None) is not None]
        fingerprint["text_encoders"] = [module_fingerprint(getattr(pipe, n)) for n in encoders]
        fingerprint["tokenizers"] = [{"class": type(t).__name__, "vocab_size": len(t), "max_length": t.model_max_length}
                                     for t in (getattr(pipe, n) for n in tokenizers)]
        fingerprint["max_sequence_length"] = config.max_sequence_length or TEXT_PIPELINES[name]
    return fingerprint


def _store(tensors: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    cast = getattr(torch, dtype)
    return {k: v.to(cast) if k in _FLOAT_KEYS else v for k, v in tensors.items()}


@torch.no_grad()
def prepare_cache(config: PipelineTrainingConfig, pipe: Any | None = None, device: str | torch.device = "cpu",
                  progress: bool = True) -> LatentCache:
    """Check every input, then build (or resume, or just open) the cache of `config` with `pipe` (default:
    loaded from `config.folder`) encoding on `device`. Nothing is written before all checks pass."""
    trainable_pipeline_class(config.folder)
    pipe = load_pipeline(config.folder) if pipe is None else pipe
    transformer, vae = pipe.transformer, pipe.vae
    resolution = config.resolution or default_resolution(transformer, vae)
    check_latent_shape(transformer, vae, resolution)
    items = collect_items(config, pipe)
    text = type(pipe).__name__ in TEXT_PIPELINES
    null = None
    if text:
        pipe.to(device)
        # The empty prompt (one row): the unconditional input of the pipeline's guidance (`negative_prompt=""`).
        null = encode_prompts(pipe, [""], config.max_sequence_length, device)
        check_text_shapes(transformer, null)
        null = _store(null, config.cache_dtype)
    vae.to(device)
    root = Path(config.images)
    shift = vae.config.shift_factor or 0.0
    scale = vae.config.scaling_factor

    def encode(start: int, stop: int) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {}
        for first in range(start, stop, config.encode_batch_size):
            chunk = items[first : min(first + config.encode_batch_size, stop)]
            pixels = torch.stack([load_image(root / item.file, resolution) for item in chunk])  # (b, 3, R, R)
            posterior = vae.encode(pixels.to(device=device, dtype=vae.dtype)).latent_dist
            # The pipeline decodes z = latents / scaling_factor + shift_factor; its latents are the inverse.
            parts = {"latent_mean": ((posterior.mean.float() - shift) * scale).cpu(),
                     "latent_std": (posterior.std.float() * scale).cpu()}  # each (b, C, h, w)
            if text:
                parts.update(encode_prompts(pipe, [item.prompt for item in chunk], config.max_sequence_length, device))
            else:
                parts["class_labels"] = torch.tensor([item.class_id for item in chunk])
            for key, value in parts.items():
                out.setdefault(key, []).append(value)
        return _store({k: torch.cat(v) for k, v in out.items()}, config.cache_dtype)

    return build_cache(config.cache_dir, cache_fingerprint(pipe, config, resolution), items_digest(items),
                       len(items), config.shard_size, encode, null=null, progress=progress)


# ------------------------------------------------------------------------------------- training-time inputs
class PipelineSource:
    """The model inputs of each training micro-step, drawn from a pipeline's latent cache.

    Built on every process: the main process loads the pipeline (`pipe`), checks the inputs and builds or
    verifies the cache (`prepare_cache`), then every process opens it; the others load only the transformer
    (`pipe` None). `denoiser` is the transformer to train (`pipe.transformer` on the main process, so that the
    saved pipeline holds the trained weights).
    """

    def __init__(self, config: PipelineTrainingConfig, train: TrainConfig, accelerator: Any,
                 progress: bool = True) -> None:
        self.config = config
        self.train = train
        self.name = trainable_pipeline_class(config.folder)
        if accelerator.is_main_process:
            self.pipe = load_pipeline(config.folder)
            self.denoiser = self.pipe.transformer
            self.cache = prepare_cache(config, self.pipe, accelerator.device, progress)
            # The text encoders served the cache; previews reuse cached embeddings. Free the device.
            self.pipe.to("cpu")
        else:
            import diffusers

            index = read_json_file(Path(config.folder) / "model_index.json", "model_index.json")
            self.pipe = None
            self.denoiser = getattr(diffusers, index["transformer"][1]).from_pretrained(config.folder,
                                                                                        subfolder="transformer")
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            self.cache = LatentCache(config.cache_dir)  # verified by the main process
        scheduler_config = read_json_file(Path(config.folder) / "scheduler" / "scheduler_config.json",
                                          "scheduler config")
        self.flow = self.name == "StableDiffusion3Pipeline"
        if self.flow:
            from diffusers import FlowMatchEulerDiscreteScheduler

            scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
            # The training grid: sigma_k and timestep_k = 1000 sigma_k, k = 0..N-1, with the pipeline's shift.
            self.sigmas = scheduler.sigmas[: scheduler.config.num_train_timesteps].float()
            self.timesteps = scheduler.timesteps[: scheduler.config.num_train_timesteps].float()
        else:
            from diffusers import DDPMScheduler

            prediction = scheduler_config.get("prediction_type", "epsilon")
            if prediction != "epsilon":
                raise ValueError(f"the {self.name}'s scheduler predicts {prediction!r}; training supports 'epsilon'")
            self.scheduler = DDPMScheduler.from_config(scheduler_config)
        if getattr(self.denoiser, "use_additional_conditions", False):
            raise ValueError(f"{config.folder!r}: PixArt transformers with additional conditions (resolution and "
                             f"aspect ratio, the 1024-MS checkpoints) are not supported for training; got "
                             f"use_additional_conditions=True, expected a 256 or 512 PixArt-alpha")
        self.null = {k: v.float() for k, v in self.cache.null().items()}  # the empty prompt (1, ...), text only
        self.null_class = int(self.denoiser.config.num_embeds_ada_norm) if self.name == "DiTPipeline" else None

    def micro_batch(self, rows: dict[str, torch.Tensor], generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(noisy, target, timesteps, conditioning) of cached `rows`, all random draws from `generator`."""
        mean, std = rows["latent_mean"].float(), rows["latent_std"].float()  # (B, C, h, w)
        n = mean.shape[0]
        x0 = mean + std * torch.randn(mean.shape, generator=generator)
        noise = torch.randn(mean.shape, generator=generator)
        drop = torch.rand(n, generator=generator) < self.train.label_dropout  # guidance dropout, per row
        if self.flow:
            index = torch.randint(0, len(self.sigmas), (n,), generator=generator)
            sigma = self.sigmas[index].view(n, 1, 1, 1)
            noisy, target, timesteps = (1 - sigma) * x0 + sigma * noise, noise - x0, self.timesteps[index]
        else:
            timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=generator)
            noisy, target = self.scheduler.add_noise(x0, noise, timesteps), noise
        if self.null_class is not None:
            labels = rows["class_labels"].long()
            return noisy, target, timesteps, {"class_labels": torch.where(drop, self.null_class, labels)}
        conditioning = {}
        for key, null in self.null.items():
            value = rows[key].float()
            mask = drop.view(n, *([1] * (value.ndim - 1)))
            conditioning[key] = torch.where(mask, null.expand_as(value), value)
        return noisy, target, timesteps, conditioning

    # ------------------------------------------------------------------------------------- previews, saving
    def preview_inputs(self) -> dict[str, Any]:
        """The pipeline-call conditioning of the previews: the first `num_previews` cached items."""
        count = min(self.config.num_previews, self.cache.num_items)
        rows = {k: v[:count] for k, v in self.cache.shard(0).items()}
        if self.null_class is not None:
            return {"class_labels": rows["class_labels"].tolist()}
        dtype, device = self.denoiser.dtype, self.denoiser.device
        embeds = rows["encoder_hidden_states"].to(device, dtype)
        negative = self.null["encoder_hidden_states"].expand_as(embeds).to(device, dtype)
        if self.name == "PixArtAlphaPipeline":
            mask = rows["encoder_attention_mask"].to(device)
            return {"prompt_embeds": embeds, "prompt_attention_mask": mask, "negative_prompt_embeds": negative,
                    "negative_prompt_attention_mask": self.null["encoder_attention_mask"].expand_as(mask).to(device),
                    "negative_prompt": None, "use_resolution_binning": False}
        pooled = rows["pooled_projections"].to(device, dtype)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative, "pooled_prompt_embeds": pooled,
                "negative_pooled_prompt_embeds": self.null["pooled_projections"].expand_as(pooled).to(device, dtype)}

    @torch.no_grad()
    def preview(self, folder: Path, exit_config: dict[str, Any] | None, heads: UncertaintyHeads | None,
                seed: int) -> dict[str, Any]:
        """Sample the previews with `exit_config` (None: `UncertaintyThreshold()` with heads, else no exits)
        through the pipeline, latents decoded by its VAE; write `folder/<i>.png` and `folder/preview.json`
        (blocks run); main process only."""
        from PIL import Image

        from ..hooks import early_exit
        from ..policies.uncertainty import UncertaintyThreshold

        if exit_config is not None:
            exit_config = EarlyExitConfig.from_dict(exit_config)
        else:  # heads without a chosen policy: the default certainty threshold
            exit_config = EarlyExitConfig(policy=UncertaintyThreshold() if heads is not None else None)
        # The previews take cached prompt embeddings: a view of the pipeline without its text encoders (left on
        # the CPU), so that the pipeline's execution device is the one of its VAE and transformer.
        pipe = type(self.pipe)(**{name: None if name.startswith(("text_encoder", "tokenizer")) else module
                                  for name, module in self.pipe.components.items()})
        pipe.vae.to(self.denoiser.device)
        pipe.set_progress_bar_config(disable=True)
        kwargs = self.preview_inputs()
        if self.config.preview_guidance_scale is not None:
            kwargs["guidance_scale"] = self.config.preview_guidance_scale
        if self.null_class is None:
            size = default_resolution(self.denoiser, pipe.vae)
            kwargs.update(height=size, width=size)
        training = self.denoiser.training
        self.denoiser.eval()
        try:
            with early_exit(self.denoiser, exit_config, heads=heads) as stats:
                images = pipe(num_inference_steps=self.config.preview_steps, output_type="np",
                              generator=torch.Generator().manual_seed(seed), **kwargs).images  # (n, R, R, 3)
        finally:
            self.denoiser.train(training)
            pipe.vae.to("cpu")
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            with atomic_path(folder / f"{i}.png") as tmp:
                Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(tmp, format="PNG")
        record = {"images": len(images), "depth_fraction": round(stats.depth_fraction, 4),
                  "exit_config": exit_config.to_dict()}
        atomic_write_json(folder / "preview.json", record, indent=1)
        return record

    def save(self, folder: Path, heads: UncertaintyHeads | None, exit_config: dict[str, Any] | None) -> None:
        """The pipeline folder (same class, trained transformer) with `exit_heads/` and `exit_config.json`."""
        self.pipe.save_pretrained(str(folder))
        if heads is not None:
            heads.save_pretrained(str(folder / HEADS_FOLDER))
        if exit_config is not None:
            atomic_write_text(folder / EXIT_CONFIG_FILE, EarlyExitConfig.from_dict(exit_config).to_json() + "\n")
