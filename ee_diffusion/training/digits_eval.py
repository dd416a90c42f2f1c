"""Quick quality check for digits models: class accuracy of samples under a classifier trained on real digits.

A sample "is a 3" when an SVM trained on scikit-learn's real digits says so; the fraction of samples classified
as the class they were generated for measures both legibility and class conditioning. The classifier's own
accuracy on held-out real digits is the ceiling (about 0.99).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class DigitsClassifier:
    """An RBF SVM on 8x8 digits in the dataset's 0..16 scale; `held_out_accuracy` on a 25% split."""

    model: Any
    held_out_accuracy: float

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(B, 8, 8[, 1]) images in [0, 1] (the pipeline's `output_type="np"`) -> (B,) predicted digits."""
        flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1) * 16.0
        return self.model.predict(flat)


def digits_classifier(seed: int = 0) -> DigitsClassifier:
    """Fit the classifier on all real digits (after measuring it on a held-out quarter)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(data.data, data.target, test_size=0.25, random_state=seed)
    held_out = float(SVC(gamma=0.001).fit(x_train, y_train).score(x_test, y_test))
    return DigitsClassifier(SVC(gamma=0.001).fit(data.data, data.target), held_out)


def sample_accuracy(
    pipe: Any,
    classifier: DigitsClassifier,
    exit_config: Any = None,
    per_class: int = 20,
    num_inference_steps: int = 25,
    guidance_scale: float = 2.0,
    seed: int = 0,
) -> dict[str, float]:
    """Generate `per_class` samples of every digit with `pipe` (an `EarlyExitDiTPipeline`); return the class
    accuracy and the fraction of full depth the run used (`exit_stats.depth_fraction`)."""
    labels = [digit for digit in range(10) for _ in range(per_class)]
    out = pipe(
        class_labels=labels,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        exit_config=exit_config,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    predicted = classifier.predict(out.images)
    return {
        "accuracy": float((predicted == np.asarray(labels)).mean()),
        "depth_fraction": float(out.exit_stats.depth_fraction),
    }
