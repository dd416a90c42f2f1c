import numpy as np
import pytest
import torch
from PIL import Image

from ee_diffusion.training.data import (
    StepBatches,
    TensorImageDataset,
    available_datasets,
    get_dataset,
    register_dataset,
)


def test_digits_scaled_and_labelled():
    ds = get_dataset("digits")
    assert ds.images.shape == (1797, 1, 8, 8) and ds.labels.shape == (1797,)
    assert ds.images.min() == -1.0 and ds.images.max() == 1.0
    assert ds.num_classes == 10 and ds.id2label()[3] == "3"
    padded = get_dataset("digits", image_size=12)
    assert padded.images.shape[-1] == 12
    torch.testing.assert_close(padded.images[:, :, 2:10, 2:10], ds.images)
    assert (padded.images[:, :, :2] == -1).all()
    up = get_dataset("digits", image_size=16, resize_mode="nearest")
    torch.testing.assert_close(up.images[:, :, ::2, ::2], ds.images)


def test_image_folder(tmp_path):
    for name, value in (("cat", 0), ("dog", 255)):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = get_dataset("image_folder", root=str(tmp_path), image_size=4, channels=3)
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images.shape == (4, 3, 4, 4)
    assert (ds.images[:2] == -1).all() and (ds.images[2:] == 1).all()
    grey = get_dataset("image_folder", root=str(tmp_path), image_size=4, channels=1)
    assert grey.images.shape == (4, 1, 4, 4)
    with pytest.raises(ValueError, match="has no class subfolders"):
        get_dataset("image_folder", root=str(tmp_path / "cat"), image_size=4)


def test_registry_lists_known_names_and_accepts_new_datasets():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; known datasets: .*digits.*image_folder"):
        get_dataset("cifar")

    @register_dataset("two_squares")
    def two_squares(image_size: int = 4) -> TensorImageDataset:
        images = torch.stack([-torch.ones(1, image_size, image_size), torch.ones(1, image_size, image_size)])
        return TensorImageDataset(images, torch.tensor([0, 1]), ["dark", "light"])

    assert "two_squares" in available_datasets()
    assert len(get_dataset("two_squares")) == 2
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("two_squares")(lambda: None)


def test_step_batches_are_a_function_of_the_step_and_shard_by_rank():
    ds = get_dataset("digits")
    a = StepBatches(ds, batch_size=8, seed=1)
    b = StepBatches(ds, batch_size=8, seed=1)
    assert torch.equal(a.indices(5), b.indices(5))
    assert torch.equal(a.indices(a.steps_per_epoch + 3), b.indices(a.steps_per_epoch + 3))
    # one epoch visits distinct images
    epoch = torch.cat([a.indices(s) for s in range(a.steps_per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch)
    ranks = [StepBatches(ds, batch_size=8, seed=1, rank=r, world_size=2).indices(5) for r in range(2)]
    assert torch.equal(torch.cat(ranks), a.indices(5))
    with pytest.raises(ValueError, match="must be divisible by the number of processes"):
        StepBatches(ds, batch_size=7, seed=0, world_size=2)
