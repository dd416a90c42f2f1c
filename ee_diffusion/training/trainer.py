"""A thin accelerate trainer for DiT and U-Net diffusion models with early exit (scratch, DeeDiff, heads-only, ASE).

What is trained is built in `training.models`, the checkpoint files are `training.checkpoints`; a config with
a `pipeline` section trains a stock pipeline's transformer on its cached latents (`pipeline_source`).

The run is a pure function of (config, step): the batch of step s comes from `StepBatches` (or `ShardBatches`),
the noise, timesteps and label dropout of a micro-step from a generator seeded with (seed, micro-step, rank). A
run stopped at step k and resumed from its checkpoint therefore continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm.auto import tqdm

from .._io import atomic_write_text, read_json_file, replace_dir
from .._validation import check_int
from ..adapters import get_adapter
from ..pipelines import EarlyExitDiTPipeline, EarlyExitUNetPipeline
from .checkpoints import (
    EMA_FILE,
    EXTRA_STATE_FILE,
    STATE_FILE,
    TMP_PREFIX,
    check_checkpoint,
    checkpoint_name,
    complete_checkpoints,
    ema_weights,
    load_extra_state,
    save_extra_state,
    truncate_log,
)
from .config import ExperimentConfig, TrainConfig
from .data import StepBatches, get_dataset, seeded_generator
from .latent_cache import ShardBatches
from .models import (
    TrainingObjective,
    build_bridges,
    build_denoiser,
    build_heads,
    disable_block_label_dropout,
    freeze_for_mode,
    make_noise_scheduler,
    make_sampling_scheduler,
)
from .pipeline_source import PipelineSource

__all__ = ["EMA_FILE", "EXTRA_STATE_FILE", "STATE_FILE", "Trainer", "lr_factor", "train"]


def lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """Step -> LR multiplier: linear warmup, then constant or cosine decay to 0 at `max_steps`.

    ```py
    >>> from ee_diffusion.training.config import TrainConfig
    >>> factor = lr_factor(TrainConfig(max_steps=10, warmup_steps=2, lr_schedule="cosine"))
    >>> [round(factor(step), 3) for step in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]

    ```
    """
    warmup, total, cosine = config.warmup_steps, config.max_steps, config.lr_schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class Trainer:
    """Builds everything from an `ExperimentConfig` and trains it under accelerate.

    Output folder layout: `experiment.json`, `log.jsonl` (one line per logged step: every loss term,
    per-block error, lr), `checkpoints/step_XXXXXXX/` (crash-safe, `training.checkpoints`) and `pipeline/`
    (the final pipeline folder with EMA weights). `denoiser` is the model trained (the DiT or the U-Net),
    `heads` and `bridges` its exit heads and U-Net bridges (None when the mode has none). The optimizer and
    RNG states are accelerate's `optimizer.bin` / `random_states_0.pkl`, which accelerate 1.15 loads with
    `torch.load(weights_only=True)`: no arbitrary unpickling. Example: `train`, which runs one.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        output_dir: str | Path,
        *,
        cpu: bool = False,
        progress: bool = True,
    ) -> None:
        self.config = config
        train = config.train
        self.output_dir = Path(output_dir)
        self.accelerator = Accelerator(
            mixed_precision=train.mixed_precision,
            gradient_accumulation_steps=train.gradient_accumulation_steps,
            cpu=cpu,
            # ASE leaves the blocks after the deepest scheduled exit of a batch without gradient.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=train.mode == "ase")],
        )
        acc = self.accelerator
        self.progress = progress and acc.is_main_process

        # A stock pipeline folder (`config.pipeline`) brings its own transformer, latent cache and noise; our
        # own models train on an in-memory pixel dataset.
        self.source: PipelineSource | None = None
        self.dataset = None
        if config.pipeline is not None:
            self.source = PipelineSource(config.pipeline, train, acc, progress=self.progress)
            self.batches = ShardBatches(self.source.cache, train.batch_size, train.seed, acc.process_index,
                                        acc.num_processes)
        else:
            self.dataset = get_dataset(config.dataset.name, **config.dataset.options)
            self.batches = StepBatches(self.dataset, train.batch_size, train.seed, acc.process_index, acc.num_processes)
        # Seeded initialisation, without touching the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train.seed)
            if self.source is not None:
                self.denoiser = self.source.denoiser
                self.null_class = self.source.null_class
                if self.null_class is not None:
                    disable_block_label_dropout(self.denoiser)
            else:
                self.denoiser = build_denoiser(config.model)
                self.null_class = self._check_data(self.denoiser)
            self.heads = build_heads(self.denoiser, config)
            self.bridges = build_bridges(self.denoiser, config)
        adapter = get_adapter(self.denoiser)
        if train.mode == "ase":
            train.ase.schedule.validate_for(adapter)
        if train.gradient_checkpointing:
            if not adapter.sequential:
                raise ValueError(f"gradient_checkpointing is for transformer backbones; got a {type(self.denoiser).__name__}")
            self.denoiser.enable_gradient_checkpointing()
        freeze_for_mode(self.denoiser, train.mode)
        self.noise_scheduler = make_noise_scheduler(train) if self.source is None else None  # pipelines: their own

        objective = TrainingObjective(self.denoiser, self.heads, train, self.bridges).train()
        trainable = [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=train.learning_rate, weight_decay=train.weight_decay)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(train))
        self.ema: EMAModel | None = None
        if train.ema_decay > 0:
            # Frozen weights would only average to themselves: the EMA keeps the trained ones (at DiT-XL or SD3
            # size a full copy of a frozen backbone costs gigabytes).
            self.ema = EMAModel(trainable, decay=train.ema_decay)
        self.objective, self.optimizer = acc.prepare(objective, optimizer)
        if self.ema is not None:
            self.ema.to(acc.device)  # next to the weights `prepare` moved (a no-op on the CPU)
        # The LR schedule steps once per optimizer step whatever the process count: keep it unprepared. It and
        # the EMA are saved by `save_checkpoint`, not by accelerate, which would pickle them.
        self.step = 0
        self.log_path = self.output_dir / "log.jsonl"

    def _check_data(self, model: nn.Module) -> int:
        """Check that the dataset fits `model`; return the model's null class (the label of guidance dropout)."""
        mc = model.config
        ds = self.dataset
        null_class = get_adapter(model).null_class_id()
        if null_class is None:
            # Label dropout (guidance training) needs the null class; the real classes are the ids below it.
            raise ValueError(
                f"the trainer needs a class-conditional denoiser with a null class, but this "
                f"{type(model).__name__} (init_from={self.config.model.init_from!r}) has none: a DiT needs "
                f"num_embeds_ada_norm, a UNet2DModel num_class_embeds (number of classes + 1)"
            )
        if (ds.channels, ds.image_size) != (mc.in_channels, mc.sample_size):
            raise ValueError(
                f"dataset images are {ds.channels}x{ds.image_size}x{ds.image_size} but the model takes "
                f"{mc.in_channels}x{mc.sample_size}x{mc.sample_size}; change the dataset options or the model"
            )
        if ds.num_classes > null_class:
            raise ValueError(f"dataset has {ds.num_classes} classes but the model only {null_class}")
        return null_class

    # ---------------------------------------------------------------------------------------------- one step
    def micro_batch(self, micro_step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(noisy, target, timesteps, conditioning) of one micro-step on this process, all on the device.

        `target` is the noise (the velocity for flow-matching pipelines); `conditioning` the denoiser's other
        keyword inputs (`class_labels`, or a text pipeline's embeddings), guidance dropout applied.
        """
        g = seeded_generator(self.config.train.seed, micro_step, self.accelerator.process_index)
        if self.source is not None:
            noisy, target, timesteps, conditioning = self.source.micro_batch(self.batches.batch(micro_step), g)
        else:
            images, labels = self.batches.batch(micro_step)
            n = images.shape[0]
            target = torch.randn(images.shape, generator=g)
            timesteps = torch.randint(0, self.config.train.num_train_timesteps, (n,), generator=g)
            drop = torch.rand(n, generator=g) < self.config.train.label_dropout
            conditioning = {"class_labels": torch.where(drop, torch.full_like(labels, self.null_class), labels)}
            noisy = self.noise_scheduler.add_noise(images, target, timesteps)
        device = self.accelerator.device
        return (noisy.to(device), target.to(device), timesteps.to(device),
                {k: v.to(device) for k, v in conditioning.items()})

    def train_step(self, log: bool) -> dict[str, torch.Tensor]:
        """One optimizer step (all its micro-steps); returns the terms averaged over micro-steps (detached)."""
        acc = self.accelerator
        train = self.config.train
        totals: dict[str, torch.Tensor] = {}
        for k in range(train.gradient_accumulation_steps):
            micro = self.step * train.gradient_accumulation_steps + k
            noisy, target, timesteps, conditioning = self.micro_batch(micro)
            with acc.accumulate(self.objective), acc.autocast():
                out = self.objective(noisy, target, timesteps, block_errors=log, **conditioning)
                acc.backward(out["loss"])
                if acc.sync_gradients and train.max_grad_norm > 0:
                    acc.clip_grad_norm_(self._trainable(), train.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if log:
                for key, value in out.items():
                    value = value.detach().float() / train.gradient_accumulation_steps
                    totals[key] = totals[key] + value if key in totals else value
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self._trainable())
        self.step += 1
        return totals

    def _trainable(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates (and the EMA averages), in module order."""
        return [p for p in self.objective_module.parameters() if p.requires_grad]

    @property
    def objective_module(self) -> TrainingObjective:
        return self.accelerator.unwrap_model(self.objective)

    # -------------------------------------------------------------------------------------------------- loop
    def train(self, max_steps: int | None = None) -> dict[str, Any]:
        """Train up to `max_steps` (default: the config's); returns the last logged record."""
        acc = self.accelerator
        train = self.config.train
        end = train.max_steps if max_steps is None else check_int(max_steps, "max_steps")
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.config.save(self.output_dir / "experiment.json")
        bar = tqdm(total=end, initial=self.step, disable=not self.progress, desc=train.mode, dynamic_ncols=True)
        record: dict[str, Any] = {"step": self.step}
        started = time.perf_counter()
        while self.step < end:
            log = (self.step + 1) % train.log_every == 0 or self.step + 1 == end
            terms = self.train_step(log)
            bar.update(1)
            if log:
                record = self._log(terms, time.perf_counter() - started)
                bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if isinstance(v, float) and k != "lr"})
            if train.checkpoint_every and self.step % train.checkpoint_every == 0:
                self.save_checkpoint()
            preview_every = self.config.pipeline.preview_every if self.config.pipeline is not None else 0
            if preview_every and self.step % preview_every == 0 and self.step < end:
                self.preview()
        bar.close()
        acc.wait_for_everyone()
        return record

    def _log(self, terms: dict[str, torch.Tensor], elapsed: float) -> dict[str, Any]:
        acc = self.accelerator
        record: dict[str, Any] = {"step": self.step, "lr": self.lr_scheduler.get_last_lr()[0], "time_s": round(elapsed, 3)}
        for key in sorted(terms):
            value = acc.reduce(terms[key].to(acc.device), reduction="mean").cpu()
            record[key] = value.item() if value.ndim == 0 else [round(v, 6) for v in value.tolist()]
        if acc.is_main_process:
            with self.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
        return record

    # --------------------------------------------------------------------------------------------- saving
    def complete_checkpoints(self) -> list[Path]:
        """Checkpoint folders under `output_dir/checkpoints` that were written to the end, oldest first."""
        return complete_checkpoints(self.output_dir / "checkpoints")

    def save_checkpoint(self) -> Path:
        """Write a checkpoint atomically; keeps the newest `checkpoints_total_limit` complete checkpoints.

        Every process writes `accelerator.save_state` into a temporary sibling folder; the main process adds the
        EMA and LR state and last `trainer_state.json`, then renames the folder into place.
        """
        acc = self.accelerator
        folder = self.output_dir / "checkpoints" / checkpoint_name(self.step)
        tmp = folder.with_name(TMP_PREFIX + folder.name)
        if acc.is_main_process:
            folder.parent.mkdir(parents=True, exist_ok=True)
            for stale in folder.parent.glob(TMP_PREFIX + "*"):  # left by a killed run
                shutil.rmtree(stale, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_extra_state(tmp, self.lr_scheduler, self.ema)
            atomic_write_text(tmp / STATE_FILE, json.dumps({"step": self.step}) + "\n")
            replace_dir(tmp, folder)
            for stale in self.complete_checkpoints()[: -self.config.train.checkpoints_total_limit]:
                shutil.rmtree(stale)
        acc.wait_for_everyone()
        return folder

    def load_checkpoint(self, folder: str | Path | None = None) -> int:
        """Restore a checkpoint (default: the newest complete one under `output_dir/checkpoints`); returns its step."""
        if folder is None:
            found = self.complete_checkpoints()
            if not found:
                raise ValueError(f"no complete checkpoint to resume from under {str(self.output_dir / 'checkpoints')!r}")
            folder = found[-1]
        folder = Path(folder)
        check_checkpoint(folder)
        try:
            self.accelerator.load_state(str(folder))
        except Exception as error:  # accelerate names the part, not always the folder
            raise ValueError(f"cannot restore checkpoint {str(folder)!r}: {type(error).__name__}: {error}") from error
        load_extra_state(folder, self.lr_scheduler, self.ema)
        self.step = int(read_json_file(folder / STATE_FILE, "trainer state")["step"])
        if self.accelerator.is_main_process and self.log_path.is_file():
            truncate_log(self.log_path, self.step)
        self.accelerator.wait_for_everyone()
        return self.step

    def default_exit_config(self) -> dict[str, Any] | None:
        """The saved pipeline's default exit config: the experiment's, else (ASE) the schedule it was tuned for."""
        if self.config.exit_config is not None:
            return self.config.exit_config
        if self.config.train.mode == "ase":
            return {"policy": self.config.train.ase.schedule.to_dict(), "cfg_pairing": "together"}
        return None

    def save_pipeline(self) -> Path:
        """Save the trained pipeline folder `output_dir/pipeline` with the EMA weights if any.

        DiTs: an `EarlyExitDiTPipeline` folder (pixel space); U-Nets: an `EarlyExitUNetPipeline` folder with the
        trained `exit_bridges/`. Labels and the default exit config go into `model_index.json`. Stock pipeline
        runs: the same stock class with the trained transformer, `exit_heads/` and `exit_config.json`
        (`PipelineSource.save`).
        """
        folder = self.output_dir / "pipeline"
        module = self.objective_module
        with ema_weights(self.ema, self._trainable()):
            if self.accelerator.is_main_process:
                # Saved next to its destination and renamed into place: never a half-written pipeline folder.
                tmp = folder.with_name(TMP_PREFIX + folder.name)
                if tmp.exists():
                    shutil.rmtree(tmp)
                exit_config = self.default_exit_config()
                if self.source is not None:
                    self.source.save(tmp, module.heads, exit_config)
                else:
                    common = dict(scheduler=make_sampling_scheduler(self.config), exit_heads=module.heads,
                                  id2label=self.dataset.id2label(), exit_config=exit_config)
                    if isinstance(module.denoiser, UNet2DModel):
                        pipe = EarlyExitUNetPipeline(unet=module.denoiser, exit_bridges=module.bridges, **common)
                    else:
                        pipe = EarlyExitDiTPipeline(transformer=module.denoiser, **common)
                    pipe.save_pretrained(str(tmp))
                replace_dir(tmp, folder)
        self.accelerator.wait_for_everyone()
        return folder

    def preview(self) -> dict[str, Any] | None:
        """Pipeline runs: sample the previews (`PipelineTrainingConfig`) with the EMA weights and the run's exits,
        decoded by the pipeline's VAE, into `output_dir/samples/step_XXXXXXX/`; returns the main process's
        record (None elsewhere, and when previews are off)."""
        if self.source is None or self.config.pipeline.num_previews == 0:
            return None
        record = None
        with ema_weights(self.ema, self._trainable()):
            if self.accelerator.is_main_process:
                folder = self.output_dir / "samples" / checkpoint_name(self.step)
                record = self.source.preview(folder, self.default_exit_config(), self.objective_module.heads,
                                             self.config.train.seed)
        self.accelerator.wait_for_everyone()
        return record


def train(config: ExperimentConfig, output_dir: str | Path, *, resume: str | None = None, cpu: bool = False,
          progress: bool = True) -> Trainer:
    """Train `config` into `output_dir` (resume: a checkpoint folder or "latest"), save the pipeline; return the
    trainer.

    ```py
    >>> import tempfile
    >>> from ee_diffusion.training.config import ExperimentConfig, ModelConfig, TrainConfig
    >>> config = ExperimentConfig(model=ModelConfig(num_layers=2, width=16, num_heads=2),
    ...                           train=TrainConfig(mode="scratch", max_steps=1, batch_size=8))
    >>> trainer = train(config, tempfile.mkdtemp(), progress=False)
    >>> trainer.step
    1
    >>> sorted(p.name for p in (trainer.output_dir / "pipeline").iterdir())
    ['model_index.json', 'scheduler', 'transformer']

    ```
    """
    trainer = Trainer(config, output_dir, cpu=cpu, progress=progress)
    if resume is not None:
        trainer.load_checkpoint(None if resume == "latest" else resume)
    trainer.train()
    if config.train.checkpoint_every:
        trainer.save_checkpoint()
    trainer.preview()
    trainer.save_pipeline()
    return trainer
