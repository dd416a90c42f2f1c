"""The shipped feature networks' training (`bench.feature_nets`): deterministic per seed."""

import torch

from bench.feature_nets import train_feature_net


def test_feature_net_training_is_deterministic():
    a, meta_a = train_feature_net("digits", steps=15)
    b, meta_b = train_feature_net("digits", steps=15)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert meta_a == meta_b  # the held-out accuracy too
    c, _ = train_feature_net("digits", steps=15, seed=1)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
