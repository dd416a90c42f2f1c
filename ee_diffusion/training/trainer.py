"""A thin accelerate trainer for DiT and U-Net diffusion models with early exit (scratch, DeeDiff, heads-only, ASE).

U-Nets (`ModelConfig(kind="unet")`, a class-conditional `UNet2DModel`) exit by depth truncation: the exit
modes train their `UNetExitBridges` jointly with the U-Net, through the same losses (`adapter.exit_outputs`).

The run is a pure function of (config, step): the batch of step s comes from `StepBatches`, and the noise,
timesteps and label dropout of a micro-step come from a generator seeded with (seed, micro-step, rank). A run
stopped at step k and resumed from its checkpoint (`accelerator.save_state`: weights, optimizer, LR schedule,
EMA) therefore continues exactly as the uninterrupted run.

```py
>>> import tempfile
>>> from ee_diffusion.training.config import ExperimentConfig, ModelConfig, TrainConfig
>>> config = ExperimentConfig(model=ModelConfig(num_layers=2, width=16, num_heads=2),
...                           train=TrainConfig(mode="scratch", max_steps=2, batch_size=8, log_every=1))
>>> trainer = Trainer(config, tempfile.mkdtemp(), progress=False)
>>> trainer.train()["step"]
2

```
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTTransformer2DModel, UNet2DModel
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm.auto import tqdm

from .._io import atomic_write_text, load_safetensors, read_json_file, replace_dir
from ..backbones import get_adapter
from ..backbones.unet import UNetExitBridges
from ..heads import UncertaintyHeads
from .config import ExperimentConfig, ModelConfig, TrainConfig
from .data import StepBatches, get_dataset
from .losses import ase_loss, deediff_loss, eps_channels

CHECKPOINT_PREFIX = "step_"
#: Written last into a checkpoint: a folder without it is incomplete and never resumed from.
STATE_FILE = "trainer_state.json"
#: The EMA weights and the LR schedule, written by the trainer as safetensors + JSON (accelerate would pickle
#: them as `custom_checkpoint_*.pkl` and load them with `weights_only=False`).
EMA_FILE = "ema.safetensors"
EXTRA_STATE_FILE = "trainer_extra.json"
#: What a U-Net pipeline folder holds besides `DDPMPipeline`'s `unet/` and `scheduler/`: labels, null class and
#: default exit config (`exit_bridges/` and `exit_heads/` are subfolders).
UNET_INFO_FILE = "early_exit.json"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}\d{{7}}$")
_TMP_PREFIX = ".tmp-"


# ----------------------------------------------------------------------------------------------------- model
def build_transformer(config: ModelConfig) -> DiTTransformer2DModel:
    """A fresh DiT from `config`, or the transformer of the pipeline folder `config.init_from` (U-Nets: `build_unet`)."""
    if config.kind == "unet":
        return build_unet(config)
    if config.init_from is not None:
        model = DiTTransformer2DModel.from_pretrained(config.init_from, subfolder="transformer")
    else:
        model = DiTTransformer2DModel(
            num_attention_heads=config.num_heads,
            attention_head_dim=config.width // config.num_heads,
            in_channels=config.in_channels,
            out_channels=2 * config.in_channels if config.learn_sigma else None,
            num_layers=config.num_layers,
            sample_size=config.sample_size,
            patch_size=config.patch_size,
            num_embeds_ada_norm=config.num_classes,
            norm_num_groups=1,
        )
    # Label dropout is done once per sample by the trainer; every block's embedder would otherwise drop
    # labels independently (and differently per block) in train mode.
    for block in model.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    return model


def build_unet(config: ModelConfig) -> UNet2DModel:
    """A fresh class-conditional `UNet2DModel` (class embedding with a null row) or `init_from/unet`."""
    if config.init_from is not None:
        return UNet2DModel.from_pretrained(config.init_from, subfolder="unet")
    attention = set(config.unet_attention_levels)
    levels = range(len(config.unet_channels))
    return UNet2DModel(
        sample_size=config.sample_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        layers_per_block=config.unet_layers_per_block,
        block_out_channels=tuple(config.unet_channels),
        down_block_types=tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if len(levels) - 1 - j in attention else "UpBlock2D" for j in levels),
        norm_num_groups=config.unet_norm_groups,
        attention_head_dim=min(config.unet_channels),
        num_class_embeds=config.num_classes + 1,  # the last row is the null class (guidance dropout)
    )


def build_bridges(model: nn.Module, config: ExperimentConfig) -> UNetExitBridges | None:
    """U-Nets in an exit mode: the bridges, loaded from `init_from/exit_bridges` when present."""
    if not isinstance(model, UNet2DModel) or config.train.mode == "scratch":
        return None
    folder = config.model.init_from
    if folder is not None and (Path(folder) / "exit_bridges").is_dir():
        bridges = UNetExitBridges.from_pretrained(folder, subfolder="exit_bridges")
        bridges.check_model(model)
        return bridges
    return UNetExitBridges.from_model(model)


def null_class_of(model: nn.Module) -> int:
    """The class id of guidance dropout: DiT `num_embeds_ada_norm`; U-Net the last class-embedding row."""
    if isinstance(model, UNet2DModel):
        return int(model.config.num_class_embeds) - 1
    return int(model.config.num_embeds_ada_norm)


def build_heads(model: nn.Module, config: ExperimentConfig) -> UncertaintyHeads | None:
    """The uncertainty heads the mode needs: loaded from `init_from/exit_heads` when present and matching."""
    train = config.train
    if train.mode not in ("deediff", "heads"):
        return None
    conditioned = train.deediff.condition_on_timestep
    folder = config.model.init_from
    if folder is not None and (Path(folder) / "exit_heads").is_dir():
        heads = UncertaintyHeads.from_pretrained(folder, subfolder="exit_heads")
        heads.check_model(model)
        if heads.conditioned == conditioned:
            return heads
    return UncertaintyHeads.from_model(model, condition_on_timestep=conditioned)


class TrainingObjective(nn.Module):
    """The denoiser (`transformer`: the DiT or the U-Net), heads and U-Net bridges with the mode's loss as
    `forward`, so DDP wraps one module.

    `forward(noisy, noise, timestep, class_labels, block_errors)` returns a dict with `loss` and the terms to
    log; with `block_errors=True` it includes `block_mse` (N,), each block's decoded error (detached).
    """

    def __init__(self, transformer: nn.Module, heads: UncertaintyHeads | None, config: TrainConfig,
                 bridges: UNetExitBridges | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.heads = heads
        self.bridges = bridges
        self.mode = config.mode
        self.deediff = config.deediff
        self.ase = config.ase

    def forward(
        self,
        noisy: torch.Tensor,
        noise: torch.Tensor,
        timestep: torch.Tensor,
        class_labels: torch.Tensor,
        block_errors: bool = False,
    ) -> dict[str, torch.Tensor]:
        extra = {} if self.bridges is None else {"bridges": self.bridges}
        if self.mode in ("deediff", "heads"):
            return deediff_loss(self.transformer, self.heads, noisy, noise, timestep, class_labels, self.deediff, **extra)
        if self.mode == "ase":
            return ase_loss(self.transformer, noisy, noise, timestep, class_labels, self.ase, **extra)
        if isinstance(self.transformer, UNet2DModel):
            # scratch U-Net: L_simple on the model's output (no bridges, so no per-depth errors).
            prediction = self.transformer(noisy, timestep, class_labels=class_labels).sample
            simple = (prediction.float() - noise.float()).pow(2).mean()
            return {"loss": simple, "simple": simple}
        # scratch: L_simple on the final block; the other blocks' errors only when asked (for the log).
        adapter = get_adapter(self.transformer)
        channels = adapter.prediction_shape()[0]
        hidden = adapter.hidden_states_per_block(noisy, timestep, class_labels)
        final = eps_channels(adapter.decode(hidden[-1], timestep=timestep, class_labels=class_labels), channels)
        simple = (final.float() - noise.float()).pow(2).mean()
        out = {"loss": simple, "simple": simple}
        if block_errors:
            with torch.no_grad():
                out["block_mse"] = torch.stack([
                    (eps_channels(adapter.decode(h, timestep=timestep, class_labels=class_labels), channels).float()
                     - noise.float()).pow(2).mean()
                    for h in hidden
                ])
        return out


def freeze_for_mode(transformer: nn.Module, mode: str) -> None:
    """heads: the backbone is frozen; ase: the timestep embedders are frozen (ASE fine-tuning)."""
    for name, param in transformer.named_parameters():
        if mode == "heads":
            param.requires_grad_(False)
        elif mode == "ase" and (".timestep_embedder." in name or name.startswith("time_embedding.")):
            param.requires_grad_(False)


def make_noise_scheduler(config: TrainConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule)


def make_sampling_scheduler(config: ExperimentConfig) -> DDPMScheduler | DDIMScheduler:
    """The scheduler saved with the pipeline: the training noise schedule, DDIM or DDPM sampling."""
    noise = make_noise_scheduler(config.train)
    return noise if config.sampling_scheduler == "ddpm" else DDIMScheduler.from_config(noise.config)


def lr_factor(config: TrainConfig):
    """Step -> LR multiplier: linear warmup, then constant or cosine decay to 0 at `max_steps`."""
    warmup, total, cosine = config.warmup_steps, config.max_steps, config.lr_schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _step_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    # Independent, reproducible stream per (seed, micro-step, rank), with no state to checkpoint.
    state = np.random.SeedSequence([seed, micro_step, rank]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


# --------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Builds everything from an `ExperimentConfig` and trains it under accelerate.

    Output folder layout: `experiment.json`, `log.jsonl` (one line per logged step: every loss term,
    per-block error, lr), `checkpoints/step_XXXXXXX/` (accelerate state + `trainer_state.json`) and
    `pipeline/` (final `save_pretrained` pipeline folder with EMA weights).

    Checkpoints are crash-safe: each is written into `checkpoints/.tmp-step_XXXXXXX/`, flushed, completed
    with `trainer_state.json` and only then renamed to `step_XXXXXXX`; resuming considers complete folders only.
    The model is saved as safetensors, the EMA weights as `ema.safetensors`, the LR schedule and EMA counters
    as JSON. The optimizer and RNG states are accelerate's `optimizer.bin` / `random_states_0.pkl`
    (`torch.save`), which accelerate 1.15 loads with `torch.load(weights_only=True)`: tensors and plain
    containers only, no arbitrary unpickling.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        output_dir: str | Path,
        *,
        cpu: bool = False,
        progress: bool = True,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.config = config
        train = config.train
        self.output_dir = Path(output_dir)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=train.mixed_precision,
            gradient_accumulation_steps=train.gradient_accumulation_steps,
            cpu=cpu,
            # ASE leaves the blocks after the deepest scheduled exit of a batch without gradient.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=train.mode == "ase")],
        )
        acc = self.accelerator
        self.progress = progress and acc.is_main_process

        self.dataset = get_dataset(config.dataset.name, **config.dataset.options)
        self.batches = StepBatches(self.dataset, train.batch_size, train.seed, acc.process_index, acc.num_processes)
        # Seeded initialisation, without touching the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train.seed)
            self.transformer = build_transformer(config.model)
            self._check_data(self.transformer)
            self.heads = build_heads(self.transformer, config)
            self.bridges = build_bridges(self.transformer, config)
        if train.mode == "ase":
            train.ase.schedule.validate_for(get_adapter(self.transformer).num_blocks)
        freeze_for_mode(self.transformer, train.mode)
        self.null_class = null_class_of(self.transformer)
        self.noise_scheduler = make_noise_scheduler(train)
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod

        objective = TrainingObjective(self.transformer, self.heads, train, self.bridges).train()
        trainable = [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=train.learning_rate, weight_decay=train.weight_decay)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(train))
        self.ema: EMAModel | None = None
        if train.ema_decay > 0:
            self.ema = EMAModel(list(objective.parameters()), decay=train.ema_decay)
        self.objective, self.optimizer = acc.prepare(objective, optimizer)
        # The LR schedule steps once per optimizer step whatever the process count: keep it unprepared.
        # The LR schedule and the EMA are saved by `save_checkpoint` (JSON + safetensors), not registered with
        # accelerate, whose custom-object state is pickled and loaded with `weights_only=False`.
        self.step = 0
        self.log_path = self.output_dir / "log.jsonl"

    def _check_data(self, model: nn.Module) -> None:
        mc = model.config
        ds = self.dataset
        classes = null_class_of(model)
        if (ds.channels, ds.image_size) != (mc.in_channels, mc.sample_size):
            raise ValueError(
                f"dataset images are {ds.channels}x{ds.image_size}x{ds.image_size} but the model takes "
                f"{mc.in_channels}x{mc.sample_size}x{mc.sample_size}; change the dataset options or the model"
            )
        if ds.num_classes > classes:
            raise ValueError(f"dataset has {ds.num_classes} classes but the model only {classes}")

    # ---------------------------------------------------------------------------------------------- one step
    def micro_batch(self, micro_step: int) -> tuple[torch.Tensor, ...]:
        """(noisy, noise, timesteps, labels) of one micro-step on this process, all on the device."""
        images, labels = self.batches.batch(micro_step)
        g = _step_generator(self.config.train.seed, micro_step, self.accelerator.process_index)
        n = images.shape[0]
        noise = torch.randn(images.shape, generator=g)
        timesteps = torch.randint(0, self.config.train.num_train_timesteps, (n,), generator=g)
        drop = torch.rand(n, generator=g) < self.config.train.label_dropout
        labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        noisy = self.noise_scheduler.add_noise(images, noise, timesteps)
        device = self.accelerator.device
        return noisy.to(device), noise.to(device), timesteps.to(device), labels.to(device)

    def train_step(self, log: bool) -> dict[str, torch.Tensor]:
        """One optimizer step (all its micro-steps); returns the terms averaged over micro-steps (detached)."""
        acc = self.accelerator
        train = self.config.train
        totals: dict[str, torch.Tensor] = {}
        for k in range(train.gradient_accumulation_steps):
            micro = self.step * train.gradient_accumulation_steps + k
            noisy, noise, timesteps, labels = self.micro_batch(micro)
            with acc.accumulate(self.objective), acc.autocast():
                out = self.objective(noisy, noise, timesteps, labels, block_errors=log)
                acc.backward(out["loss"])
                if acc.sync_gradients and train.max_grad_norm > 0:
                    acc.clip_grad_norm_([p for p in self.objective.parameters() if p.requires_grad], train.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if log:
                for key, value in out.items():
                    value = value.detach().float() / train.gradient_accumulation_steps
                    totals[key] = totals[key] + value if key in totals else value
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.objective_module.parameters())
        self.step += 1
        return totals

    @property
    def objective_module(self) -> TrainingObjective:
        return self.accelerator.unwrap_model(self.objective)

    # -------------------------------------------------------------------------------------------------- loop
    def train(self, max_steps: int | None = None) -> dict[str, Any]:
        """Train up to `max_steps` (default: the config's); returns the last logged record."""
        acc = self.accelerator
        train = self.config.train
        end = train.max_steps if max_steps is None else max_steps
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
    def checkpoint_dir(self, step: int | None = None) -> Path:
        return self.output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.step if step is None else step:07d}"

    def complete_checkpoints(self) -> list[Path]:
        """Checkpoint folders under `output_dir/checkpoints` that were written to the end, oldest first."""
        root = self.output_dir / "checkpoints"
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if _CHECKPOINT_NAME.match(p.name) and (p / STATE_FILE).is_file())

    def save_checkpoint(self) -> Path:
        """Write a checkpoint atomically; keeps the newest `checkpoints_total_limit` complete checkpoints.

        Every process writes `accelerator.save_state` into a temporary sibling folder; the main process adds the
        EMA weights (safetensors), the LR schedule (JSON) and last `trainer_state.json`, flushes everything
        and renames the folder into place. A process killed at any point leaves no folder under a checkpoint
        name that is incomplete.
        """
        acc = self.accelerator
        folder = self.checkpoint_dir()
        tmp = folder.with_name(_TMP_PREFIX + folder.name)
        if acc.is_main_process:
            folder.parent.mkdir(parents=True, exist_ok=True)
            for stale in folder.parent.glob(_TMP_PREFIX + "*"):  # left by a killed run
                shutil.rmtree(stale, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._save_extra_state(tmp)
            atomic_write_text(tmp / STATE_FILE, json.dumps({"step": self.step}) + "\n")
            replace_dir(tmp, folder)
            for stale in self.complete_checkpoints()[: -self.config.train.checkpoints_total_limit]:
                shutil.rmtree(stale)
        acc.wait_for_everyone()
        return folder

    def _save_extra_state(self, folder: Path) -> None:
        from safetensors.torch import save_file

        extra: dict[str, Any] = {"lr_scheduler": self.lr_scheduler.state_dict()}
        if self.ema is not None:
            state = self.ema.state_dict()
            shadow = state.pop("shadow_params")
            extra["ema"] = state
            save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(shadow)}, str(folder / EMA_FILE))
        atomic_write_text(folder / EXTRA_STATE_FILE, json.dumps(extra) + "\n")

    def _load_extra_state(self, folder: Path) -> None:
        extra = read_json_file(folder / EXTRA_STATE_FILE, "trainer checkpoint state")
        if not isinstance(extra, dict) or "lr_scheduler" not in extra:
            raise ValueError(f"{str(folder / EXTRA_STATE_FILE)!r} has no 'lr_scheduler' entry: not a checkpoint of this trainer")
        self.lr_scheduler.load_state_dict(extra["lr_scheduler"])
        if self.ema is None:
            return
        if "ema" not in extra:
            raise ValueError(f"this run keeps an EMA but checkpoint {str(folder)!r} has none (ema_decay changed?)")
        tensors = load_safetensors(folder / EMA_FILE, "EMA weights")
        current = self.ema.shadow_params
        if len(tensors) != len(current) or any(tensors.get(str(i)) is None or tensors[str(i)].shape != p.shape
                                               for i, p in enumerate(current)):
            raise ValueError(
                f"EMA weights {str(folder / EMA_FILE)!r} do not fit this model ({len(tensors)} tensors for "
                f"{len(current)} parameters or shapes differ): the checkpoint belongs to another experiment"
            )
        shadow = [tensors[str(i)].to(device=p.device, dtype=p.dtype) for i, p in enumerate(current)]
        self.ema.load_state_dict({**extra["ema"], "shadow_params": shadow})

    def load_checkpoint(self, folder: str | Path | None = None) -> int:
        """Restore a checkpoint (default: the newest complete one under `output_dir/checkpoints`); returns its step."""
        if folder is None:
            found = self.complete_checkpoints()
            if not found:
                raise ValueError(f"no complete checkpoint to resume from under {str(self.output_dir / 'checkpoints')!r}")
            folder = found[-1]
        folder = Path(folder)
        if not (folder / STATE_FILE).is_file():
            raise ValueError(f"{str(folder)!r} is not a complete checkpoint of this trainer (no {STATE_FILE})")
        if not (folder / EXTRA_STATE_FILE).is_file() and any(folder.glob("custom_checkpoint_*.pkl")):
            raise ValueError(
                f"{str(folder)!r} was written by an older ee_diffusion that pickled the EMA and LR state "
                f"(custom_checkpoint_*.pkl); this version never unpickles: start the run afresh"
            )
        try:
            self.accelerator.load_state(str(folder))
        except Exception as error:  # accelerate names the part, not always the folder
            raise ValueError(f"cannot restore checkpoint {str(folder)!r}: {type(error).__name__}: {error}") from error
        self._load_extra_state(folder)
        self.step = int(read_json_file(folder / STATE_FILE, "trainer state")["step"])
        if self.accelerator.is_main_process and self.log_path.is_file():
            # Drop records logged after the checkpoint: the resumed run logs those steps again. A line cut short
            # by a killed process is dropped too.
            kept = []
            for line in self.log_path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("step", math.inf) <= self.step:
                    kept.append(line)
            atomic_write_text(self.log_path, "".join(line + "\n" for line in kept))
        self.accelerator.wait_for_everyone()
        return self.step

    def default_exit_config(self) -> dict[str, Any] | None:
        """The saved pipeline's default exit config: the experiment's, else (ASE) the schedule it was tuned for."""
        if self.config.exit_config is not None:
            return self.config.exit_config
        if self.config.train.mode == "ase":
            return {"policy": self.config.train.ase.schedule.to_dict(), "cfg_pairing": "together"}
        return None

    def save_pipeline(self, folder: str | Path | None = None, use_ema: bool = True) -> Path:
        """Save an `EarlyExitDiTPipeline` folder (pixel space) with the EMA weights if any.

        U-Nets: a `DDPMPipeline` folder (`unet/`, `scheduler/`) plus `exit_bridges/`, `exit_heads/` (when
        trained) and `early_exit.json` (labels, null class, default exit config); load it with
        `ee_diffusion.eval.unet_sampling.load_unet_folder`.
        """
        from ..pipelines import EarlyExitDiTPipeline

        folder = Path(folder) if folder is not None else self.output_dir / "pipeline"
        acc = self.accelerator
        module = self.objective_module
        swap = use_ema and self.ema is not None
        if swap:
            self.ema.store(module.parameters())
            self.ema.copy_to(module.parameters())
        try:
            if acc.is_main_process and isinstance(module.transformer, UNet2DModel):
                tmp = folder.with_name(_TMP_PREFIX + folder.name)
                if tmp.exists():
                    shutil.rmtree(tmp)
                DDPMPipeline(unet=module.transformer, scheduler=make_sampling_scheduler(self.config)).save_pretrained(str(tmp))
                if module.bridges is not None:
                    module.bridges.save_pretrained(str(tmp / "exit_bridges"))
                if module.heads is not None:
                    module.heads.save_pretrained(str(tmp / "exit_heads"))
                info = {"id2label": {str(k): v for k, v in self.dataset.id2label().items()},
                        "null_class": self.null_class, "exit_config": self.default_exit_config()}
                atomic_write_text(tmp / UNET_INFO_FILE, json.dumps(info, indent=2) + "\n")
                replace_dir(tmp, folder)
            elif acc.is_main_process:
                pipe = EarlyExitDiTPipeline(
                    transformer=module.transformer,
                    scheduler=make_sampling_scheduler(self.config),
                    vae=None,
                    exit_heads=module.heads,
                    id2label=self.dataset.id2label(),
                    exit_config=self.default_exit_config(),
                )
                # Saved next to its destination and renamed into place: never a half-written pipeline folder.
                tmp = folder.with_name(_TMP_PREFIX + folder.name)
                if tmp.exists():
                    shutil.rmtree(tmp)
                pipe.save_pretrained(str(tmp))
                replace_dir(tmp, folder)
        finally:
            if swap:
                self.ema.restore(module.parameters())
        acc.wait_for_everyone()
        return folder


def train(config: ExperimentConfig, output_dir: str | Path, *, resume: str | None = None, cpu: bool = False,
          progress: bool = True) -> Trainer:
    """Train `config` into `output_dir` (resume: a checkpoint folder or "latest"), save the pipeline; return the trainer."""
    trainer = Trainer(config, output_dir, cpu=cpu, progress=progress)
    if resume is not None:
        trainer.load_checkpoint(None if resume == "latest" else resume)
    trainer.train()
    if config.train.checkpoint_every:
        trainer.save_checkpoint()
    trainer.save_pipeline()
    return trainer
