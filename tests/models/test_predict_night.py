"""Whole-night inference: windows cover every epoch and overlapping windows are averaged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from somnray.models import create_model
from somnray.models.inference import predict_night, window_starts


@pytest.mark.parametrize("n,length,stride,expected", [
    (10, 4, None, [0, 4, 6]), (8, 4, None, [0, 4]), (3, 4, None, [0]), (0, 4, None, []),
    (6, 4, 1, [0, 1, 2]),
])
def test_window_starts_cover_every_epoch(n, length, stride, expected):
    """Windows start on the stride grid plus one ending at the last epoch; short nights get one."""
    assert window_starts(n, length, stride).tolist() == expected


def test_predict_night_probabilities_match_a_direct_forward():
    """With one window the result is the model's softmax; rows sum to one for any night length."""
    torch.manual_seed(0)
    model = create_model("coresleep_tiny").eval()
    rng = np.random.default_rng(0)
    signals = {"eeg": rng.standard_normal((6, 3000)).astype(np.float32),
               "eog": rng.standard_normal((6, 3000)).astype(np.float32)}
    present = np.ones((6, 2), dtype=bool)
    probs = predict_night(model, signals, present, length=6)
    with torch.no_grad():
        direct = torch.softmax(model({m: torch.from_numpy(x)[None] for m, x in signals.items()},
                                     torch.from_numpy(present)[None]).logits, -1)[0].numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-5)
    longer = predict_night(model, {m: np.tile(x, (3, 1)) for m, x in signals.items()},
                           np.ones((18, 2), bool), length=4, stride=1, batch_size=3)
    assert longer.shape == (18, 5)
    np.testing.assert_allclose(longer.sum(1), 1.0, atol=1e-5)


def test_predict_night_scores_a_recording_without_a_modality():
    """A night lacking EOG entirely is scored from EEG alone."""
    model = create_model("coresleep_tiny").eval()
    eeg = np.random.default_rng(1).standard_normal((9, 3000)).astype(np.float32)
    present = np.zeros((9, 2), bool)
    present[:, 0] = True
    probs = predict_night(model, {"eeg": eeg}, present, length=4)
    assert probs.shape == (9, 5) and np.isfinite(probs).all()
