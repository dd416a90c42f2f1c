"""Training a class-conditional UNet2DModel with its exit bridges: modes, resume, saved folder, sampling."""

import json

import pytest
import torch
from accelerate.state import AcceleratorState

from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.pipelines import EarlyExitUNetPipeline
from ee_diffusion.schedules import StaticDepth
from ee_diffusion.training.config import ExperimentConfig, ModelConfig, TrainConfig
from ee_diffusion.training.trainer import Trainer, train
from ee_diffusion.unet import UNetExitBridges


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


def test_unet_training_learns_the_digits(tmp_path):
    # 10 steps of batch 32: L_simple on four fixed noised batches falls from about 1.1 to about 0.43.
    trainer = Trainer(_config(mode="scratch", max_steps=10, batch_size=32, learning_rate=1e-2, ema_decay=0.0,
                              label_dropout=0.0), tmp_path, progress=False)
    # Micro-steps far past the run: batches whose noise and timesteps the run never trains on.
    batches = [trainer.micro_batch(10**6 + i) for i in range(4)]

    def held_out_loss():
        with torch.no_grad():
            return sum(float(trainer.objective_module(*batch[:3], **batch[3])["simple"]) for batch in batches) / len(batches)

    before = held_out_loss()
    trainer.train()
    after = held_out_loss()
    assert after < before / 2, (before, after)


def test_a_unet_without_a_null_class_is_refused(tmp_path):
    from diffusers import UNet2DModel

    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                ).save_pretrained(tmp_path / "init" / "unet")
    config = ExperimentConfig(model=ModelConfig(**TINY, init_from=str(tmp_path / "init")),
                              train=TrainConfig(mode="scratch", max_steps=1, batch_size=8))
    with pytest.raises(ValueError, match=r"null class, but this UNet2DModel .*has none.*num_class_embeds"):
        Trainer(config, tmp_path / "run", progress=False)


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
    pipe = EarlyExitUNetPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.exit_bridges, UNetExitBridges) and pipe.exit_heads is not None
    assert pipe.num_classes == 10 and pipe.get_label_ids(["3"]) == [3]
    trainer.ema.copy_to(trainer.objective_module.parameters())  # the folder holds the EMA weights
    saved, trained = pipe.exit_bridges.state_dict(), trainer.bridges.state_dict()
    assert saved.keys() == trained.keys()
    for name in saved:
        torch.testing.assert_close(saved[name], trained[name], msg=name)
    out = pipe([0, 1, 2], num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
               exit_config=EarlyExitConfig(policy=StaticDepth(2)), output_type="pt")
    assert out.images.shape == (3, 1, 8, 8) and torch.isfinite(out.images).all()
    assert out.exit_stats.depth_fraction == pytest.approx(2 / 3)
    # init_from resumes training from the folder, bridges included
    again = Trainer(ExperimentConfig(model=ModelConfig(**TINY, init_from=str(folder)),
                                     train=TrainConfig(mode="deediff", max_steps=1, batch_size=8)),
                    tmp_path / "again", progress=False)
    loaded = again.bridges.state_dict()
    assert loaded.keys() == saved.keys()
    for name in saved:
        torch.testing.assert_close(loaded[name], saved[name], msg=name)
