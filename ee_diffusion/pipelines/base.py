"""What the class-conditional early-exit pipelines share: labels, inputs, the default exit config, the loop.

`ClassConditionalExitPipeline` follows diffusers' pipeline contract (components registered with
`register_modules`, a `check_inputs` that raises, `@torch.no_grad()` on `__call__` in the subclasses, an output
dataclass) and leaves the exit mechanics to the engine: a call with an exit policy wraps its denoising loop in
`early_exit(denoiser, config, heads, bridges, layout)`, which hooks the denoiser for the duration of the call,
tells the engine the guidance layout and that the loop is one sampling run (`BatchLayout`), and restores the model
exactly afterwards; a call without one (and without hooks the user applied) runs the stock denoiser unhooked.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..adapters import get_adapter
from ..config import EarlyExitConfig
from ..hooks import early_exit, is_early_exit_applied
from ..layout import BatchLayout
from ..operating_point import OperatingPoint, ResolvedCall
from ..results import adopt_saved_result
from ..stats import ExitStats
from .checks import check_finite, check_weights_match, id2label_labels

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Scheduler variance types that consume the model's learned-variance channels in `scheduler.step`.
_LEARNED_VARIANCE = ("learned", "learned_range")


@dataclass
class EarlyExitPipelineOutput(BaseOutput):
    """Output of the early-exit pipelines.

    Attributes:
        images: the samples in [0, 1]: a list of `PIL.Image` (`output_type="pil"`), a (B, H, W, C) float32
            array (`"np"`) or a (B, C, H, W) tensor (`"pt"`); with `"latent"`, the final latents (B, C, h, w)
            before decoding (pixel space: the raw samples, neither clamped nor rescaled).
        exit_stats: blocks run at every model call of the run, per row (guided runs: B conditional rows
            followed by their B unconditional partners); see `ExitStats`.
        operating_point: what ran and why: `num_inference_steps`, `guidance_scale`, `exit_config` and `source`
            (e.g. "default operating point", "exit_config given").
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    exit_stats: ExitStats
    operating_point: dict[str, Any] | None = None


class ClassConditionalExitPipeline(DiffusionPipeline):
    """Base of `EarlyExitDiTPipeline` and `EarlyExitUNetPipeline`: everything but the denoiser's call.

    A subclass names its denoiser component (`denoiser_name`), registers its modules and implements
    `predict(model_input, timesteps, labels)`.
    """

    #: The attribute that holds the denoiser ("transformer" or "unet").
    denoiser_name: ClassVar[str] = ""
    #: What a call without `guidance_scale` uses.
    default_guidance_scale: ClassVar[float] = 1.0
    #: Components whose weights file `from_pretrained` checks against their config.
    _checked_components: ClassVar[tuple[str, ...]] = ()

    #: Steps of a call that gives none, on a pipeline without an operating point (diffusers' default).
    fallback_num_inference_steps: ClassVar[int] = 50

    def _init_config(self, id2label: Any, exit_config: Any, operating_point: Any = None) -> None:
        stored, self.labels = id2label_labels(id2label)
        self.register_to_config(id2label=stored)
        self.set_operating_point(operating_point)
        self.set_default_exit_config(exit_config)

    @property
    def denoiser(self) -> nn.Module:
        return getattr(self, self.denoiser_name)

    def predict(self, model_input: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The denoiser's output (B, C_out, H, W) for (B, C, H, W) inputs, (B,) timesteps and (B,) labels."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load a pipeline folder: weights through safetensors only.

        Beyond diffusers' own loading, a missing folder raises `FileNotFoundError` naming it, and a component whose
        `config.json` does not match its weights (diffusers would initialise the missing blocks at random with a
        warning) raises `ValueError` naming the file. Components passed as keywords are used as given.
        """
        kwargs.setdefault("use_safetensors", True)
        path = str(pretrained_model_name_or_path)
        hub_id = not os.path.isabs(path) and not path.startswith(".") and path.count("/") == 1  # "org/name"
        if not os.path.isdir(path) and not hub_id:
            raise FileNotFoundError(f"no pipeline folder at {path!r}")
        pipe = super().from_pretrained(path, **kwargs)
        if os.path.isdir(path):
            for name in cls._checked_components:
                component = getattr(pipe, name, None)
                if component is not None and name not in kwargs:
                    check_weights_match(component, os.path.join(path, name), kwargs.get("variant"))
            adopt_saved_result(pipe, path, kwargs)
        return pipe

    # ------------------------------------------------------------------------------------------ configuration
    @property
    def default_exit_config(self) -> EarlyExitConfig:
        """The exit config of a call without arguments (a fresh copy; `EarlyExitConfig()` if none): the
        operating point's when the pipeline has one (see `resolve_call` for calls that give their steps)."""
        return self.resolve_call(None, None, None).exit_config

    def set_default_exit_config(self, config: EarlyExitConfig | dict[str, Any] | None) -> None:
        """Set the default exit config; it is saved in `model_index.json` by `save_pretrained`.

        On a pipeline with an operating point, this replaces the operating point's exit config (at its steps)."""
        if isinstance(config, dict):
            config = EarlyExitConfig.from_dict(config)
        if config is not None and not isinstance(config, EarlyExitConfig):
            raise TypeError(f"exit_config must be an EarlyExitConfig, a dict or None, got {type(config).__name__}")
        point = self.operating_point
        if point is not None and config is not None:
            point.exit_config = copy.deepcopy(config)
            if point.exit_configs_by_steps:
                point.exit_configs_by_steps[point.num_inference_steps] = copy.deepcopy(config)
            self.set_operating_point(point)
            config = None
        # A deep copy: the saved dict must not share lists with a policy the caller may still change.
        self.register_to_config(exit_config=None if config is None else copy.deepcopy(config.to_dict()))

    @property
    def operating_point(self) -> OperatingPoint | None:
        """The recommended (scheduler, steps, guidance, exit config) of this pipeline, or None (a fresh copy)."""
        data = self.config.get("operating_point")
        return None if data is None else OperatingPoint.from_dict(copy.deepcopy(dict(data)))

    def set_operating_point(self, point: OperatingPoint | dict[str, Any] | None) -> None:
        """Set (or clear, with None) the operating point; `save_pretrained` writes it into `model_index.json`."""
        if isinstance(point, dict):
            point = OperatingPoint.from_dict(point)
        if point is not None and not isinstance(point, OperatingPoint):
            raise TypeError(f"operating_point must be an OperatingPoint, a dict or None, got {type(point).__name__}")
        self.register_to_config(operating_point=None if point is None else point.to_dict())

    def resolve_call(self, num_inference_steps: int | None, guidance_scale: float | None,
                     exit_config: EarlyExitConfig | None) -> ResolvedCall:
        """What a call with these arguments (None: not given) runs: the operating point fills in what the caller
        did not give (see `OperatingPoint.resolve`); without one, 50 steps, `default_guidance_scale` and the
        pipeline's default exit config."""
        if exit_config is not None and not isinstance(exit_config, EarlyExitConfig):
            raise TypeError(f"exit_config must be an EarlyExitConfig or None, got {type(exit_config).__name__}")
        point = self.operating_point
        if point is not None:
            resolved = point.resolve(num_inference_steps, guidance_scale, type(self.scheduler).__name__)
        else:
            data = self.config.get("exit_config")
            config = EarlyExitConfig() if data is None else EarlyExitConfig.from_dict(copy.deepcopy(dict(data)))
            resolved = ResolvedCall(
                self.fallback_num_inference_steps if num_inference_steps is None else num_inference_steps,
                self.default_guidance_scale if guidance_scale is None else guidance_scale,
                config, "pipeline default exit config (no operating point)")
        if exit_config is not None:
            resolved.exit_config = exit_config
            resolved.source = "exit_config given"
        return resolved

    @property
    def num_classes(self) -> int:
        """Number of real classes; the id `num_classes` itself is the null class (guidance)."""
        return int(get_adapter(self.denoiser).null_class_id())

    @property
    def is_pixel_space(self) -> bool:
        return self.vae is None

    def get_label_ids(self, labels: str | Sequence[str]) -> list[int]:
        """Map label names (from `id2label`) to class ids; one name or a list of names.

        Raises `ValueError` listing every unknown name.
        """
        if not self.labels:
            raise ValueError("this pipeline has no label names; pass `id2label={id: 'name'}` when building it")
        if isinstance(labels, str):
            labels = [labels]
        unknown = [name for name in labels if name not in self.labels]
        if unknown:
            raise ValueError(f"unknown labels {unknown}; known labels: {sorted(self.labels)}")
        return [self.labels[name] for name in labels]

    # -------------------------------------------------------------------------------------------- validation
    def _label_tensor(self, class_labels: Any) -> torch.Tensor:
        """Validate `class_labels` and return them as a (B,) long tensor on the CPU."""
        allowed = f"an int or a non-empty list/tuple/1-D tensor of ints in [0, {self.num_classes})"
        if isinstance(class_labels, str):
            raise TypeError(
                f"class_labels must be {allowed}, got the string {class_labels!r}; "
                f"map names to ids with pipe.get_label_ids(...)"
            )
        if isinstance(class_labels, torch.Tensor):
            if class_labels.ndim > 1 or class_labels.dtype.is_floating_point or class_labels.dtype.is_complex \
                    or class_labels.dtype == torch.bool:
                raise TypeError(
                    f"class_labels must be {allowed}, got a {class_labels.dtype} tensor of shape "
                    f"{tuple(class_labels.shape)}"
                )
            labels = class_labels.detach().reshape(-1).cpu().long()
        elif isinstance(class_labels, Integral) and not isinstance(class_labels, bool):
            labels = torch.tensor([int(class_labels)])
        elif isinstance(class_labels, (list, tuple)):
            bad = [v for v in class_labels if isinstance(v, bool) or not isinstance(v, Integral)]
            if bad:
                raise TypeError(f"class_labels must be {allowed}, got non-integer entries {bad!r}")
            huge = [int(v) for v in class_labels if not -(2**62) < int(v) < 2**62]
            if huge:
                raise ValueError(f"class_labels must be {allowed}, got out-of-range ids {huge}")
            labels = torch.tensor([int(v) for v in class_labels], dtype=torch.long)
        else:
            raise TypeError(f"class_labels must be {allowed}, got {type(class_labels).__name__}")
        if labels.numel() == 0:
            raise ValueError(f"class_labels must be {allowed}, got an empty sequence")
        out_of_range = labels[(labels < 0) | (labels >= self.num_classes)]
        if out_of_range.numel():
            raise ValueError(f"class_labels must be {allowed}, got out-of-range ids {out_of_range.tolist()}")
        return labels

    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the denoiser's input."""
        config = self.denoiser.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return int(config.in_channels), int(height), int(width)

    def check_inputs(
        self,
        class_labels: Any,
        guidance_scale: Any,
        num_inference_steps: Any,
        latents: Any,
        exit_config: Any,
        output_type: Any,
        generator: Any = None,
        return_dict: Any = True,
    ) -> torch.Tensor:
        """Raise `ValueError`/`TypeError` naming the bad value and the allowed ones; return the (B,) labels."""
        labels = self._label_tensor(class_labels)
        if generator is not None:
            generators = generator if isinstance(generator, list) else [generator]
            bad = [type(g).__name__ for g in generators if not isinstance(g, torch.Generator)]
            if bad or not generators:
                raise TypeError(f"generator must be a torch.Generator, a list of them or None, got {bad or generator!r}")
            if len(generators) not in (1, labels.numel()) and isinstance(generator, list):
                raise ValueError(
                    f"a list of generators needs one per image ({labels.numel()}) or exactly one, got {len(generators)}"
                )
        if not isinstance(return_dict, bool):
            raise TypeError(f"return_dict must be True or False, got {return_dict!r}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, Integral):
            raise TypeError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        allowed = "a finite number >= 0 (guidance is on when > 1)"
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, Real):
            raise TypeError(f"guidance_scale must be {allowed}, got {guidance_scale!r}")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be {allowed}, got {guidance_scale!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if latents is not None:
            if not isinstance(latents, torch.Tensor):
                raise TypeError(f"latents must be a torch.Tensor or None, got {type(latents).__name__}")
            expected = (labels.numel(), *self.sample_shape())
            if tuple(latents.shape) != expected:
                raise ValueError(
                    f"latents must have shape (batch, channels, height, width) = {expected} for "
                    f"{labels.numel()} labels, got {tuple(latents.shape)}"
                )
            if not latents.dtype.is_floating_point:
                raise TypeError(f"latents must be a floating-point tensor, got {latents.dtype}")
            if not bool(torch.isfinite(latents).all()):
                raise ValueError(
                    f"latents must be finite, got NaN/inf in rows "
                    f"{(~torch.isfinite(latents).reshape(latents.shape[0], -1).all(1)).nonzero().flatten().tolist()}"
                )
        if exit_config is not None and not isinstance(exit_config, EarlyExitConfig):
            raise TypeError(f"exit_config must be an EarlyExitConfig or None, got {type(exit_config).__name__}")
        config = exit_config if exit_config is not None else self.default_exit_config
        if config.policy is not None and config.policy.needs_certainty and self.exit_heads is None:
            raise ValueError(
                f"the exit policy {type(config.policy).__name__} needs uncertainty heads, but this pipeline has "
                f"exit_heads=None; build it with `exit_heads=UncertaintyHeads...` or load it with "
                f"`from_pretrained(folder, exit_heads=heads)`"
            )
        return labels

    # ------------------------------------------------------------------------------------------------ sampling
    def exit_parts(self) -> dict[str, Any]:
        """The keyword arguments `early_exit` needs besides the config (heads; U-Nets also their bridges)."""
        return {"heads": self.exit_heads}

    # ---------------------------------------------------------------------------------------------- the call
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | Sequence[int] | torch.Tensor,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        latents: torch.Tensor | None = None,
        exit_config: EarlyExitConfig | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> EarlyExitPipelineOutput | tuple:
        r"""Generate one image per class label.

        Args:
            class_labels: class ids in `[0, num_classes)`: an int, or a list/tuple/1-D tensor of ints. Names
                map to ids with `get_label_ids`.
            guidance_scale: classifier-free guidance weight; guidance is on when `> 1` (the batch then runs
                every row twice, with its label and with the null class `num_classes`). None: the operating
                point's, else the pipeline's `default_guidance_scale` (DiT 4.0 as `DiTPipeline`; U-Net 1.0).
            generator: `torch.Generator`(s) for the initial noise and for stochastic schedulers.
            num_inference_steps: number of denoising steps (Heun-type schedulers call the model about twice per
                step; the loop follows `scheduler.timesteps`). None: the operating point's (else 50).
            latents: optional initial noise of shape (B, C, H, W), scaled by the scheduler's
                `init_noise_sigma` like freshly drawn noise.
            exit_config: the exit policy for this call; `None`: the operating point's for these steps (see
                `resolve_call`), else `default_exit_config`.
            output_type: `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict: return an `EarlyExitPipelineOutput` (else a tuple `(images, exit_stats)`).

        Returns:
            `EarlyExitPipelineOutput` with `images`, `exit_stats` (every model call of the run) and
            `operating_point` (what ran, and why).

        ```py
        >>> import torch
        >>> from diffusers import DDIMScheduler
        >>> from ee_diffusion.pipelines import EarlyExitDiTPipeline
        >>> from ee_diffusion.testing import tiny_dit
        >>> pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=2), scheduler=DDIMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> images = pipe(class_labels=3, num_inference_steps=2, output_type="pil").images
        >>> images[0].size, images[0].mode
        ((8, 8), 'L')

        ```
        """
        resolved = self.resolve_call(num_inference_steps, guidance_scale, exit_config)
        guidance_scale, num_inference_steps = resolved.guidance_scale, resolved.num_inference_steps
        config = resolved.exit_config
        labels = self.check_inputs(
            class_labels, guidance_scale, num_inference_steps, latents, config, output_type, generator, return_dict
        )
        device = self._execution_device
        denoiser = self.denoiser
        dtype = denoiser.dtype
        batch_size = labels.numel()
        shape = self.sample_shape()
        channels = shape[0]
        guided = guidance_scale > 1

        # 1. Initial noise (B, C, H, W).
        if latents is None:
            latents = randn_tensor((batch_size, *shape), generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma

        # 2. Labels: guided batches are [x; x] with labels [y; null] - the layout DiTPipeline uses; the engine is
        #    told it (BatchLayout), so it never compares tensors to find the guidance pairs.
        labels = labels.to(device)
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, self.num_classes)])
        layout = BatchLayout(guidance_pairs=guided, one_run=True)  # this sampling loop is one run

        # 3. Timesteps, and the extra arguments this scheduler's `step` takes.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = generator
        learned_sigma = denoiser.config.out_channels == 2 * channels
        keep_sigma = learned_sigma and self.scheduler.config.get("variance_type") in _LEARNED_VARIANCE

        # 4. Denoising loop, with the denoiser hooked for this call only. Without a policy (and without hooks a
        #    user applied) the stock denoiser runs unhooked - exactly the stock model, at its speed - and the
        #    statistics record full depth for every row.
        if config.policy is None and not is_early_exit_applied(denoiser):
            context, unhooked = contextlib.nullcontext(ExitStats(get_adapter(denoiser).num_blocks)), True
        else:
            context, unhooked = early_exit(denoiser, config, layout=layout, **self.exit_parts()), False
        with context as exit_stats:
            for t in self.progress_bar(self.scheduler.timesteps):
                model_input = self.scheduler.scale_model_input(latents, t)
                if guided:
                    model_input = torch.cat([model_input, model_input])
                timestep = t.to(device).expand(model_input.shape[0])  # (B,) or (2B,)
                noise_pred = self.predict(model_input, timestep, labels)
                if unhooked:
                    rows = timestep.shape[0]
                    exit_stats.record(timestep, torch.full((rows,), exit_stats.num_blocks), cfg_paired=guided)

                # Guidance acts on the noise channels only; a learned variance (the second half of the channels
                # of a learned-sigma model) is taken from the conditional rows, as in the DiT reference code.
                eps, sigma = noise_pred[:, :channels], noise_pred[:, channels:]
                if guided:
                    cond_eps, uncond_eps = eps.chunk(2)
                    eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
                    sigma = sigma[:batch_size]
                model_output = torch.cat([eps, sigma], dim=1) if keep_sigma else eps

                latents = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample

        # 5. Decode: latent space through the VAE, pixel space as is; both map [-1, 1] to [0, 1]. Never return
        #    NaN/inf images (see EarlyExitConfig.on_nonfinite): one check of the latents, one of the decode.
        check_finite(latents, "final latents", exit_stats)
        if output_type == "latent":
            images = latents
        else:
            if self.vae is not None:
                # `latents * (1 / scaling_factor)` rather than `/`: the exact arithmetic of DiTPipeline.
                latents = latents.to(self.vae.dtype) * (1 / self.vae.config.scaling_factor)
                samples = self.vae.decode(latents).sample
                check_finite(samples, "VAE-decoded images", exit_stats)
            else:
                samples = latents
            images = (samples / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                images = images.cpu().permute(0, 2, 3, 1).float().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)

        self.maybe_free_model_hooks()
        if not return_dict:
            return images, exit_stats
        return EarlyExitPipelineOutput(images=images, exit_stats=exit_stats, operating_point=resolved.as_output())
