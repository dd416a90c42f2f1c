"""What the tests/test_interop_*.py files share: one batch of 4 rows, a per-row schedule and a model call."""

from __future__ import annotations

import torch

from ee_diffusion.schedules import TimestepSchedule

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
T = torch.tensor([100, 900, 300, 700])  # every depth of PER_ROW once
Y = torch.tensor([1, 2, 3, 4])
PER_ROW = TimestepSchedule(boundaries=[200, 500, 800], depths=[4, 3, 2, 1])


def run(model, x=X, t=T, y=Y):
    """A DiT call without gradients; returns the sample tensor."""
    with torch.no_grad():
        return model(x, timestep=t, class_labels=y, return_dict=False)[0]
