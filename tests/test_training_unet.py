"""Training a class-conditional UNet2DModel with its exit bridges: modes, resume, saved folder, sampling."""

import json

import pytest
import torch
from accelerate.state import AcceleratorState

from ee_diffusion.backbones.unet import UNetExitBridges
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.eval.unet_sampling import load_unet_folder, sample_unet
from ee_diffusion.schedules import StaticDepth
from ee_diffusion.training.config import ExperimentConfig, ModelConfig, TrainConfig
from ee_diffusion.training.trainer import Trainer, train


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


TINY = dict(kind="unet", sample_size=8, unet_channels=[8, 16, 16], unet_attention_levels=[1], unet_norm_groups=4)
ASE = {"schedule": {"type": "TimestepSchedule", "boundaries": [500], "depths": [3, 2]}}


def _config(**train):
    base = dict(mode="deediff", max_steps=4, batch_size=8, log_every=1, ema_decay=0.9, learning_rate=3e-3)
    base.update(train)
    return ExperimentConfig(model=ModelConfig(**TINY), train=TrainConfig(**base))


def test_unet_config_validates_and_round_trips():
    config = _config()
    assert ExperimentConfig.from_json(config.to_json()) == config
    assert ModelConfig().kind == "dit"
    with pytest.raises(ValueError, match="kind"):
        ModelConfig(kind="vit")
    with pytest.raises(ValueError, match="divisible by 2"):
        ModelConfig(kind="unet", sample_size=6, unet_channels=[8, 16, 16], unet_norm_groups=4)
    with pytest.raises(ValueError, match="unet_attention_levels"):
        ModelConfig(**{**TINY, "unet_attention_levels": [3]})


@pytest.mark.parametrize("mode,extra", [("scratch", {}), ("deediff", {}), ("ase", {"ase": ASE})])
def test_unet_modes_train_with_finite_losses(tmp_path, mode, extra):
    trainer = Trainer(_config(mode=mode, **extra), tmp_path, progress=False)
    assert (trainer.bridges is None) == (mode == "scratch")
    assert trainer.null_class == 10
    bridges_before = None if trainer.bridges is None else [p.clone() for p in trainer.bridges.parameters()]
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    if mode != "scratch":
        assert len(records[-1]["block_mse"]) == 3
        assert any(not torch.equal(a, b) for a, b in zip(bridges_before, trainer.bridges.parameters()))


def test_unet_loss_decreases(tmp_path):
    trainer = Trainer(_config(mode="scratch", max_steps=5, batch_size=32, learning_rate=1e-2, ema_decay=0.0),
                      tmp_path, progress=False)
    trainer.train()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]


def test_unet_resume_matches_uninterrupted_run(tmp_path):
    config = _config()
    full = Trainer(config, tmp_path / "full", progress=False)
    full.train()
    first = Trainer(config, tmp_path / "split", progress=False)
    first.train(max_steps=2)
    first.save_checkpoint()
    resumed = Trainer(config, tmp_path / "split", progress=False)
    assert resumed.load_checkpoint() == 2
    resumed.train()
    a, b = full.objective_module.state_dict(), resumed.objective_module.state_dict()
    assert a.keys() == b.keys() and any(k.startswith("bridges.") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


def test_unet_pipeline_folder_reloads_bridges_and_samples(tmp_path):
    trainer = train(_config(max_steps=2), tmp_path, progress=False)
    folder = tmp_path / "pipeline"
    assert (folder / "exit_bridges" / "diffusion_pytorch_model.safetensors").is_file()
    bundle = load_unet_folder(folder)
    assert isinstance(bundle.bridges, UNetExitBridges) and bundle.heads is not None
    assert bundle.null_class == 10 and bundle.id2label[3] == "3"
    trainer.ema.copy_to(trainer.objective_module.parameters())  # the folder holds the EMA weights
    for (name, saved), trained in zip(bundle.bridges.state_dict().items(), trainer.bridges.state_dict().values()):
        torch.testing.assert_close(saved, trained, msg=name)
    images, stats = sample_unet(bundle.unet, bundle.scheduler, [0, 1, 2], num_inference_steps=2,
                                generator=torch.Generator().manual_seed(0), guidance_scale=2.0,
                                exit_config=EarlyExitConfig(policy=StaticDepth(2)), bridges=bundle.bridges)
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()
    assert stats.depth_fraction == pytest.approx(2 / 3)
    # init_from resumes training from the folder, bridges included
    again = Trainer(ExperimentConfig(model=ModelConfig(**TINY, init_from=str(folder)),
                                     train=TrainConfig(mode="deediff", max_steps=1, batch_size=8)),
                    tmp_path / "again", progress=False)
    for saved, loaded in zip(bundle.bridges.parameters(), again.bridges.parameters()):
        torch.testing.assert_close(loaded, saved)


def test_shipped_digits_unet_loads_and_samples_with_exits():
    from ee_diffusion.eval.unet_sampling import load_digits_unet

    bundle = load_digits_unet()
    assert bundle.null_class == 10 and bundle.bridges is not None
    assert next(bundle.unet.parameters()).dtype == torch.float32
    images, stats = sample_unet(bundle.unet, bundle.scheduler, [3, 7], num_inference_steps=3,
                                generator=torch.Generator().manual_seed(0),
                                exit_config=EarlyExitConfig(policy=StaticDepth(2)), bridges=bundle.bridges)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    assert stats.depth_fraction == pytest.approx(2 / 3)
