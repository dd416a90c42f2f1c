"""What an experiment trains, as validated dataclasses that round-trip through JSON.

An `ExperimentConfig` is saved as `experiment.json` next to the run's checkpoints; `ee-diffusion train --config
experiment.json` runs it. How a run executes (output folder, resume, CPU) are command-line flags, not config.

```py
>>> config = ExperimentConfig(train=TrainConfig(mode="scratch", max_steps=10))
>>> ExperimentConfig.from_json(config.to_json()) == config
True

```
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .._validation import check_int, check_number
from .losses import ASELossConfig, DeeDiffLossConfig

TRAIN_MODES = ("scratch", "deediff", "heads", "ase")
MIXED_PRECISION = ("no", "bf16", "fp16")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
LR_SCHEDULES = ("constant", "cosine")
SAMPLING_SCHEDULERS = ("ddim", "ddpm")
MODEL_KINDS = ("dit", "unet")
CACHE_DTYPES = ("float32", "float16", "bfloat16")


def _choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _as_dict(config: Any) -> dict[str, Any]:
    """A config dataclass's fields as a dict, lists and tuples as fresh lists (as JSON gives them back)."""
    data = {f.name: getattr(config, f.name) for f in fields(config)}
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in data.items()}


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a dict, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {where} keys {sorted(unknown)}; allowed: {sorted(names)}")
    return cls(**data)


@dataclass
class DatasetConfig:
    """A registered dataset (`ee_diffusion.training.data.available_datasets()`) and its options."""

    name: str = "digits"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .data import available_datasets

        if self.name not in available_datasets():
            raise ValueError(f"unknown dataset {self.name!r}; known datasets: {', '.join(available_datasets())}")
        if not isinstance(self.options, dict):
            raise ValueError(f"dataset options must be a dict, got {self.options!r}")


@dataclass
class ModelConfig:
    """The denoiser to train: a DiT (`kind="dit"`) or a class-conditional `UNet2DModel` (`kind="unet"`), built
    from these numbers or loaded from a pipeline folder (`init_from`).

    DiT: `patch_size`, `num_layers`, `width`, `num_heads`, `learn_sigma`. U-Net: `unet_channels` (one entry per
    level; every level but the last downsamples, so `sample_size` must be divisible by 2^(levels-1)),
    `unet_layers_per_block`, `unet_attention_levels` (levels with self-attention) and `unet_norm_groups`; the
    class embedding has `num_classes + 1` rows, the last being the null class of guidance dropout, and the
    trainer adds `UNetExitBridges` for the exit modes. `init_from` is a folder saved by this trainer (DiT: or by
    `EarlyExitDiTPipeline.save_pretrained`): subfolders `transformer/` or `unet/` and optionally `exit_heads/`
    and `exit_bridges/`; the shape fields are then ignored.
    """

    sample_size: int = 8
    in_channels: int = 1
    patch_size: int = 2
    num_layers: int = 8
    width: int = 128
    num_heads: int = 4
    num_classes: int = 10
    learn_sigma: bool = False
    init_from: str | None = None
    kind: str = "dit"
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    unet_layers_per_block: int = 1
    unet_attention_levels: list[int] = field(default_factory=list)
    unet_norm_groups: int = 8

    def __post_init__(self) -> None:
        _choice(self.kind, "kind", MODEL_KINDS)
        for name in ("sample_size", "in_channels", "patch_size", "num_layers", "width", "num_heads", "num_classes"):
            check_int(getattr(self, name), name)
        if not isinstance(self.learn_sigma, bool):
            raise ValueError(f"learn_sigma must be a bool, got {self.learn_sigma!r}")
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise ValueError(f"init_from must be a folder path or None, got {self.init_from!r}")
        if self.kind == "dit":
            if self.width % self.num_heads:
                raise ValueError(f"width must be divisible by num_heads, got width={self.width}, num_heads={self.num_heads}")
            if self.sample_size % self.patch_size:
                raise ValueError(f"sample_size {self.sample_size} must be divisible by patch_size {self.patch_size}")
            return
        channels = self.unet_channels
        if not isinstance(channels, (list, tuple)) or len(channels) < 2:
            raise ValueError(f"unet_channels must be a list of >= 2 positive integers, got {channels!r}")
        self.unet_channels = [check_int(c, "unet_channels entry") for c in channels]
        check_int(self.unet_layers_per_block, "unet_layers_per_block")
        check_int(self.unet_norm_groups, "unet_norm_groups")
        if any(c % self.unet_norm_groups for c in self.unet_channels):
            raise ValueError(f"unet_channels {self.unet_channels} must be divisible by unet_norm_groups {self.unet_norm_groups}")
        levels = self.unet_attention_levels
        if not isinstance(levels, (list, tuple)) or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self.unet_channels) for i in levels
        ):
            raise ValueError(f"unet_attention_levels must be a list of level indices in 0..{len(self.unet_channels) - 1}, got {levels!r}")
        self.unet_attention_levels = sorted(set(levels))
        if self.sample_size % 2 ** (len(self.unet_channels) - 1):
            raise ValueError(
                f"sample_size {self.sample_size} must be divisible by 2^{len(self.unet_channels) - 1} for a "
                f"{len(self.unet_channels)}-level U-Net"
            )
        if self.learn_sigma:
            raise ValueError("learn_sigma is for DiTs; a U-Net predicts eps only")


@dataclass
class TrainConfig:
    """How the model is trained.

    Modes: `scratch` (L_simple only, no heads), `deediff` (all weights and heads, DeeDiff loss), `heads` (frozen
    backbone, heads only, DeeDiff loss), `ase` (all weights but the timestep embedder, ASE loss).
    `batch_size` is the global batch of one micro-step (split over processes); an optimizer step sees
    `batch_size * gradient_accumulation_steps` samples. `label_dropout` replaces a sample's class by the null
    class with that probability (classifier-free guidance training). `ema_decay = 0` disables EMA.
    `lr_schedule`: linear warmup over `warmup_steps`, then constant or cosine decay to 0 at `max_steps`.
    `mixed_precision` ("bf16", "fp16") is accelerate's autocast; the weights, optimizer and EMA stay float32.

    `gradient_checkpointing` (transformer backbones) recomputes each block's inner activations in backward,
    keeping only the N block outputs (B, L, D) the exits read anyway, for about one more forward of the trained
    blocks per step (in `heads` mode, with no gradient into the frozen backbone, it changes nothing).
    """

    mode: str = "scratch"
    max_steps: int = 1000
    batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    mixed_precision: str = "no"
    seed: int = 0
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    deediff: DeeDiffLossConfig = field(default_factory=DeeDiffLossConfig)
    ase: ASELossConfig = field(default_factory=ASELossConfig)
    log_every: int = 10
    checkpoint_every: int = 0
    checkpoints_total_limit: int = 2
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        _choice(self.mode, "mode", TRAIN_MODES)
        check_int(self.max_steps, "max_steps")
        check_int(self.batch_size, "batch_size")
        check_int(self.gradient_accumulation_steps, "gradient_accumulation_steps", what="micro-steps per step")
        self.learning_rate = check_number(self.learning_rate, "learning_rate", low_open=True)
        self.weight_decay = check_number(self.weight_decay, "weight_decay")
        check_int(self.warmup_steps, "warmup_steps", low=0, what="0: no warmup")
        _choice(self.lr_schedule, "lr_schedule", LR_SCHEDULES)
        self.max_grad_norm = check_number(self.max_grad_norm, "max_grad_norm")
        self.ema_decay = check_number(self.ema_decay, "ema_decay", high=1.0)
        if self.ema_decay == 1.0:
            raise ValueError("ema_decay must be < 1 (0 disables EMA), got 1.0")
        self.label_dropout = check_number(self.label_dropout, "label_dropout", high=1.0)
        _choice(self.mixed_precision, "mixed_precision", MIXED_PRECISION)
        check_int(self.seed, "seed", low=0)
        check_int(self.num_train_timesteps, "num_train_timesteps")
        _choice(self.beta_schedule, "beta_schedule", BETA_SCHEDULES)
        self.deediff = _from_dict(DeeDiffLossConfig, self.deediff, "deediff loss config")
        self.ase = _from_dict(ASELossConfig, self.ase, "ase loss config")
        check_int(self.log_every, "log_every")
        check_int(self.checkpoint_every, "checkpoint_every", low=0, what="steps between checkpoints; 0: none")
        check_int(self.checkpoints_total_limit, "checkpoints_total_limit", what="checkpoints kept")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be a bool, got {self.gradient_checkpointing!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**_as_dict(self), "deediff": self.deediff.to_dict(), "ase": self.ase.to_dict()}


@dataclass
class PipelineTrainingConfig:
    """Train the denoiser of a local stock pipeline folder on an image folder, in its VAE's latent space.

    `folder`: a local `DiTPipeline` (class-conditional), `PixArtAlphaPipeline` or `StableDiffusion3Pipeline`
    (text-conditioned) folder; the run trains its transformer (and heads) and saves the same pipeline class.
    `images`: for a DiT, `images/<class>/*.png` where `<class>` is a class id or a name of the pipeline's
    `id2label`; for text pipelines, images anywhere under the folder, each captioned by a `.txt` file of the
    same name beside it, or by `captions`, a JSONL file of `{"file_name": "<path under images>", "prompt":
    "..."}` lines. Images are resized (shorter side) and centre-cropped to `resolution` (default: the
    transformer's `sample_size` times the VAE's downsampling factor).

    Images and prompts are encoded once (`prepare_cache`: the VAE's posterior mean and std, scaled with the VAE
    config's `scaling_factor` and `shift_factor`; `pipe.encode_prompt` embeddings) into safetensors shards of
    `shard_size` images under `cache_dir`, stored as `cache_dtype`, `encode_batch_size` images per encoder
    call; `max_sequence_length` caps the prompt tokens (None: the pipeline's default). Training streams the
    shards; the cache's fingerprint (the VAE's and text encoders' config and weights hash, the resolution)
    refuses a cache made by other encoders.

    The noise schedule is the pipeline's own scheduler config (DDPM eps for DiT and PixArt, flow matching for
    SD3), so `TrainConfig.num_train_timesteps` and `beta_schedule` are not used. `TrainConfig.label_dropout`
    replaces a row's class by the null class (DiT) or its prompt by the pipeline's empty-prompt embedding.
    Every `preview_every` steps (0: only at the end) and at the end, `num_previews` images (0: none) are
    sampled with the pipeline in `preview_steps` steps, with exits (the run's default exit config, or
    `UncertaintyThreshold()` for heads), decoded with the VAE into `output_dir/samples/`.

    ```py
    >>> PipelineTrainingConfig(folder="DiT-XL-2-256", images="photos", cache_dir="latents").shard_size
    256

    ```
    """

    folder: str
    images: str
    cache_dir: str
    captions: str | None = None
    resolution: int | None = None
    shard_size: int = 256
    encode_batch_size: int = 8
    cache_dtype: str = "float32"
    max_sequence_length: int | None = None
    preview_every: int = 0
    num_previews: int = 4
    preview_steps: int = 20
    preview_guidance_scale: float | None = None

    def __post_init__(self) -> None:
        for name in ("folder", "images", "cache_dir"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty folder path, got {value!r}")
        if self.captions is not None and (not isinstance(self.captions, str) or not self.captions):
            raise ValueError(f"captions must be a JSONL file path or None (captions beside the images), got {self.captions!r}")
        if self.resolution is not None:
            check_int(self.resolution, "resolution", what="pixels; None: the transformer's own")
        check_int(self.shard_size, "shard_size", what="images per cache shard")
        check_int(self.encode_batch_size, "encode_batch_size", what="images per encoder call")
        _choice(self.cache_dtype, "cache_dtype", CACHE_DTYPES)
        if self.max_sequence_length is not None:
            check_int(self.max_sequence_length, "max_sequence_length", what="prompt tokens; None: the pipeline's")
        check_int(self.preview_every, "preview_every", low=0, what="steps between previews; 0: at the end only")
        check_int(self.num_previews, "num_previews", low=0, what="images; 0: no previews")
        check_int(self.preview_steps, "preview_steps", what="sampling steps")
        if self.preview_guidance_scale is not None:
            self.preview_guidance_scale = check_number(self.preview_guidance_scale, "preview_guidance_scale")

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


@dataclass
class ExperimentConfig:
    """Dataset + model + training; the saved pipelines get `exit_config` as their default exit config and a
    `sampling_scheduler` ("ddim" or "ddpm") with the training noise schedule.

    With a `pipeline` section (`PipelineTrainingConfig`) the run trains a stock pipeline's denoiser on its
    latents instead: the model, its data and its schedulers come from that folder, so `dataset`, `model` and
    `sampling_scheduler` must keep their defaults (they are left out of `to_dict`).
    """

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    exit_config: dict[str, Any] | None = None
    sampling_scheduler: str = "ddim"
    pipeline: PipelineTrainingConfig | None = None

    def __post_init__(self) -> None:
        _choice(self.sampling_scheduler, "sampling_scheduler", SAMPLING_SCHEDULERS)
        self.dataset = _from_dict(DatasetConfig, self.dataset, "dataset config")
        self.model = _from_dict(ModelConfig, self.model, "model config")
        self.train = _from_dict(TrainConfig, self.train, "train config")
        if self.pipeline is not None:
            self.pipeline = _from_dict(PipelineTrainingConfig, self.pipeline, "pipeline config")
            unused = [name for name, value, default in (
                ("dataset", self.dataset, DatasetConfig()), ("model", self.model, ModelConfig()),
                ("sampling_scheduler", self.sampling_scheduler, "ddim")) if value != default]
            if unused:
                raise ValueError(
                    f"a config with a 'pipeline' section takes its model, data and schedulers from the pipeline "
                    f"folder; remove {unused} (got {', '.join(f'{n}={getattr(self, n)!r}' for n in unused)})"
                )
        if self.exit_config is not None:
            from ..config import EarlyExitConfig

            EarlyExitConfig.from_dict(self.exit_config)  # validates

    def to_dict(self) -> dict[str, Any]:
        common = {"train": self.train.to_dict(), "exit_config": self.exit_config}
        if self.pipeline is not None:
            return {"pipeline": self.pipeline.to_dict(), **common}
        return {
            "dataset": {"name": self.dataset.name, "options": dict(self.dataset.options)},
            "model": _as_dict(self.model),
            **common,
            "sampling_scheduler": self.sampling_scheduler,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        return _from_dict(cls, data, "experiment config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ExperimentConfig":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        from .._io import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentConfig":
        from .._io import read_json_file

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"experiment config {str(path)!r} does not exist")
        try:
            return cls.from_dict(read_json_file(path, "experiment config"))
        except TypeError as error:  # a value of the wrong type deep inside a section
            raise TypeError(f"experiment config {str(path)!r}: {error}") from None
