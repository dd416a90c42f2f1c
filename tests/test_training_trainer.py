import json
import math

import pytest
import torch
from accelerate.state import AcceleratorState

from ee_diffusion.training.config import ExperimentConfig, ModelConfig, TrainConfig
from ee_diffusion.training.trainer import Trainer, train


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    # accelerate keeps one process-wide state (mixed precision, accumulation); each test builds its own.
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


TINY = ModelConfig(num_layers=2, width=16, num_heads=2)
ASE = {"schedule": {"type": "TimestepSchedule", "boundaries": [500], "depths": [2, 1]}}


def _config(**train):
    base = dict(mode="deediff", max_steps=4, batch_size=8, log_every=1, ema_decay=0.9, warmup_steps=2, learning_rate=1e-3)
    base.update(train)
    return ExperimentConfig(model=TINY, train=TrainConfig(**base))


def _state(trainer):
    module = trainer.objective_module
    params = {k: v.detach().clone() for k, v in module.state_dict().items()}
    ema = [p.clone() for p in trainer.ema.shadow_params] if trainer.ema is not None else []
    return params, ema


def test_resume_matches_uninterrupted_run_exactly(tmp_path):
    config = _config(gradient_accumulation_steps=2)
    full = Trainer(config, tmp_path / "full", progress=False)
    full.train()
    first = Trainer(config, tmp_path / "split", progress=False)
    first.train(max_steps=2)
    first.save_checkpoint()
    first.train(max_steps=3)  # logged past the checkpoint, then "crashed": the resumed run redoes step 3
    resumed = Trainer(config, tmp_path / "split", progress=False)
    assert resumed.load_checkpoint() == 2
    resumed.train()
    params_a, ema_a = _state(full)
    params_b, ema_b = _state(resumed)
    assert params_a.keys() == params_b.keys()
    for key in params_a:
        torch.testing.assert_close(params_b[key], params_a[key], rtol=0, atol=1e-6, msg=key)
    assert len(ema_a) == len(ema_b) > 0
    for a, b in zip(ema_a, ema_b):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    log_a = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_b] == pytest.approx([r["loss"] for r in log_a], abs=1e-6)


def test_log_has_every_term_and_per_block_error(tmp_path):
    trainer = Trainer(_config(max_steps=2), tmp_path, progress=False)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in ("loss", "simple", "uncertainty", "ual", "lr"):
        assert isinstance(records[-1][key], float)
    assert len(records[-1]["block_mse"]) == 2 and len(records[-1]["certainty"]) == 2
    assert records[-1]["block_mse"][-1] == pytest.approx(records[-1]["simple"], abs=1e-5)


def _held_out_loss(trainer, batches):
    """L_simple of the trained model on fixed noised batches (same noise and timesteps before and after)."""
    with torch.no_grad():
        return sum(float(trainer.objective_module(*batch[:3], **batch[3])["simple"]) for batch in batches) / len(batches)


def test_scratch_training_learns_the_digits(tmp_path):
    # 50 steps of batch 32 on 8x8 digits: L_simple on four fixed batches falls from about 1.5 to about 0.4.
    config = ExperimentConfig(model=TINY, train=TrainConfig(mode="scratch", max_steps=50, batch_size=32,
                                                            learning_rate=3e-3, ema_decay=0.0, label_dropout=0.0))
    trainer = Trainer(config, tmp_path, progress=False)
    # Micro-steps far past the run: batches whose noise and timesteps the run never trains on.
    batches = [trainer.micro_batch(10**6 + i) for i in range(4)]
    before = _held_out_loss(trainer, batches)
    trainer.train()
    after = _held_out_loss(trainer, batches)
    assert after < before / 3, (before, after)


def test_heads_mode_freezes_backbone_and_ase_freezes_timestep_embedder(tmp_path):
    trainer = Trainer(_config(mode="heads", max_steps=2, ema_decay=0.0), tmp_path / "h", progress=False)
    before = {k: v.clone() for k, v in trainer.denoiser.state_dict().items()}
    heads_before = [p.clone() for p in trainer.heads.parameters()]
    trainer.train()
    assert all(torch.equal(v, trainer.denoiser.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, trainer.heads.parameters()))

    trainer = Trainer(_config(mode="ase", max_steps=2, ema_decay=0.0, ase=ASE), tmp_path / "a", progress=False)
    assert trainer.heads is None
    before = {k: v.clone() for k, v in trainer.denoiser.state_dict().items()}
    trainer.train()
    after = trainer.denoiser.state_dict()
    frozen = [k for k in before if ".timestep_embedder." in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in frozen)
    from ee_diffusion.pipelines import EarlyExitDiTPipeline

    pipe = EarlyExitDiTPipeline.from_pretrained(trainer.save_pipeline())
    assert pipe.exit_heads is None and pipe.default_exit_config.policy.depths == [2, 1]


def test_label_dropout_is_per_sample_to_null_id_and_embedder_dropout_is_off(tmp_path):
    trainer = Trainer(_config(label_dropout=1.0), tmp_path, progress=False)
    assert all(b.norm1.emb.class_embedder.dropout_prob == 0 for b in trainer.denoiser.transformer_blocks)
    labels = trainer.micro_batch(0)[3]["class_labels"]
    assert labels.tolist() == [10] * 8
    trainer = Trainer(_config(label_dropout=0.5), tmp_path, progress=False)
    labels = torch.cat([trainer.micro_batch(i)[3]["class_labels"] for i in range(20)])
    assert 0.3 < (labels == 10).float().mean() < 0.7


def test_train_saves_loadable_pipeline_with_ema_weights_and_heads(tmp_path):
    from ee_diffusion.pipelines import EarlyExitDiTPipeline

    config = _config(max_steps=2, checkpoint_every=1, checkpoints_total_limit=1)
    config.exit_config = {"policy": {"type": "StaticDepth", "depth": 1}, "cfg_pairing": "together"}
    trainer = train(config, tmp_path, progress=False)
    assert len(list((tmp_path / "checkpoints").iterdir())) == 1
    assert ExperimentConfig.load(tmp_path / "experiment.json") == config
    pipe = EarlyExitDiTPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.exit_heads is not None and pipe.default_exit_config.policy.depth == 1
    # The saved transformer holds the EMA weights, not the live ones (which differ after 2 steps).
    names = [n for n, _ in trainer.objective_module.named_parameters()]
    ema = dict(zip(names, trainer.ema.shadow_params))
    live = dict(trainer.objective_module.named_parameters())
    saved = dict(pipe.transformer.named_parameters())
    assert {f"denoiser.{name}" for name in saved} <= set(ema)
    for name, weight in saved.items():
        torch.testing.assert_close(weight, ema[f"denoiser.{name}"])
    assert any(not torch.equal(weight, live[f"denoiser.{name}"]) for name, weight in saved.items())
    out = pipe(class_labels=[1, 2], num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 8, 8, 1)


def test_bf16_mixed_precision_runs(tmp_path):
    record = Trainer(_config(mode="scratch", max_steps=1, mixed_precision="bf16"), tmp_path, progress=False).train()
    assert record["step"] == 1 and math.isfinite(record["loss"])


def test_experiment_config_round_trip_and_validation(tmp_path):
    config = _config(mode="ase", ase={"schedule": {"type": "TimestepSchedule", "boundaries": [500], "depths": [2, 1]}})
    config.save(tmp_path / "e.json")
    assert ExperimentConfig.load(tmp_path / "e.json") == config
    with pytest.raises(ValueError, match="mode must be one of"):
        TrainConfig(mode="distill")
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps must be an integer >= 1 .*got 0"):
        TrainConfig(gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got True"):
        TrainConfig(batch_size=True)
    with pytest.raises(ValueError, match="unknown train config keys"):
        ExperimentConfig.from_dict({"train": {"epochs": 3}})
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; known datasets: .*digits"):
        ExperimentConfig.from_dict({"dataset": {"name": "mnist"}})
    with pytest.raises(ValueError, match="width must be divisible by num_heads"):
        ModelConfig(width=10, num_heads=4)
    with pytest.raises(ValueError, match="asks for depth 8 but the model has 2 blocks"):
        Trainer(_config(mode="ase"), tmp_path)
    with pytest.raises(ValueError, match="dataset images are 1x8x8 but the model takes 1x16x16"):
        Trainer(ExperimentConfig(model=ModelConfig(num_layers=1, width=16, num_heads=2, sample_size=16)), tmp_path)


def test_cli_train_and_resume(tmp_path, capsys):
    from ee_diffusion.cli import main

    config = _config(max_steps=2, checkpoint_every=2)
    config.save(tmp_path / "experiment.json")
    out = tmp_path / "run"
    args = ["train", "--config", str(tmp_path / "experiment.json"), "--output-dir", str(out), "--no-progress", "--cpu"]
    assert main(args) == 0
    assert (out / "pipeline" / "model_index.json").is_file()
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(args + ["--resume", "latest", "--max-steps", "3"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_checkpoint_of_version_0_1_still_resumes(tmp_path):
    """0.1 named the objective's denoiser `transformer`: its checkpoints' weight names must still load."""
    from safetensors.torch import load_file, save_file

    config = _config()
    first = Trainer(config, tmp_path, progress=False)
    first.train(max_steps=2)
    folder = first.save_checkpoint()
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    assert any(k.startswith("denoiser.") for k in tensors)
    save_file({k.replace("denoiser.", "transformer.", 1): v for k, v in tensors.items()}, weights)
    resumed = Trainer(config, tmp_path, progress=False)
    assert resumed.load_checkpoint() == 2
    for name, value in first.objective_module.state_dict().items():
        torch.testing.assert_close(resumed.objective_module.state_dict()[name], value, rtol=0, atol=0, msg=name)
