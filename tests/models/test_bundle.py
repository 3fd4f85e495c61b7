"""Model bundles: a trained model round-trips through model.pt + model.json without the platform."""

from __future__ import annotations

import json

import pytest
import torch

from somnray.models import create_model
from somnray.models.bundle import INFO_FILE, WEIGHTS_FILE, load_bundle, save_bundle


def test_bundle_round_trip_gives_identical_outputs(tmp_path):
    """A saved and reloaded model returns exactly the same logits, buffers included."""
    torch.manual_seed(0)
    model = create_model("coresleep_tiny", modalities=("eeg", "eog")).eval()
    model.set_spectrogram_statistics("eeg", torch.full((128,), -3.0), torch.full((128,), 7.0))
    save_bundle(model, tmp_path, name="coresleep_tiny", overrides={"modalities": ["eeg", "eog"]},
                sequence_length=5, extra={"run": "file:///runs/x"})
    loaded, info = load_bundle(tmp_path)
    signals = {m: torch.randn(1, 5, 3000) for m in ("eeg", "eog")}
    present = torch.ones(1, 5, 2, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(model(signals, present).logits, loaded(signals, present).logits)
    assert info.sequence_length == 5 and info.extra["run"] == "file:///runs/x"
    assert not loaded.training


def test_bundle_without_weights_or_with_wrong_format_is_refused(tmp_path):
    """A folder that is not a bundle, or a model.json of another format, fails with a clear error."""
    with pytest.raises(FileNotFoundError, match="not a somnray model bundle"):
        load_bundle(tmp_path)
    save_bundle(create_model("mc2sleepnet_tiny"), tmp_path, name="mc2sleepnet_tiny", sequence_length=4)
    doc = json.loads((tmp_path / INFO_FILE).read_text())
    (tmp_path / INFO_FILE).write_text(json.dumps({**doc, "format": "other/9"}))
    with pytest.raises(ValueError, match="format 'other/9'"):
        load_bundle(tmp_path)


def test_bundle_weights_must_fit_the_named_model(tmp_path):
    """Weights of one architecture under another's name are refused, naming the weights file."""
    save_bundle(create_model("mc2sleepnet_tiny"), tmp_path, name="mc2sleepnet_tiny", sequence_length=4)
    doc = json.loads((tmp_path / INFO_FILE).read_text())
    (tmp_path / INFO_FILE).write_text(json.dumps({**doc, "model": "coresleep_tiny", "modalities": ["eeg", "eog"]}))
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE}: weights do not fit"):
        load_bundle(tmp_path)


def test_bundle_records_window_classes_calibration_and_weights_hash(tmp_path):
    """model.json carries the window rule, class names, an empty calibration slot, the profile and
    summary given, and the SHA-256 of model.pt; they survive a load."""
    import hashlib

    profile = {"name": "my-lab", "channels": {"eeg": {"aliases": ["EEG Fpz-Cz"]}}}
    save_bundle(create_model("coresleep_tiny"), tmp_path, name="coresleep_tiny", sequence_length=11,
                eval_stride=5, profile=profile, data_summary={"eeg": {"n_epochs": 3}})
    _, info = load_bundle(tmp_path)
    assert info.weights_sha256 == hashlib.sha256((tmp_path / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert info.window["sequence_length"] == 11 and info.window["default_stride"] == 11
    assert info.window["validation_stride"] == 5 and info.window["sampling_rate_hz"] == 100
    assert info.class_names == ("W", "N1", "N2", "N3", "REM") and info.calibration == {"temperature": None}
    assert info.profile == profile and info.data_summary == {"eeg": {"n_epochs": 3}}


def test_bundle_from_before_self_contained_fields_still_loads(tmp_path):
    """A model.json with only the original keys loads, its new fields empty (old bundles keep working)."""
    save_bundle(create_model("coresleep_tiny"), tmp_path, name="coresleep_tiny", sequence_length=11)
    doc = json.loads((tmp_path / INFO_FILE).read_text())
    old = {k: doc[k] for k in ("format", "model", "overrides", "modalities", "sequence_length", "extra")}
    (tmp_path / INFO_FILE).write_text(json.dumps(old))
    _, info = load_bundle(tmp_path)
    assert info.profile is None and info.weights_sha256 is None and info.data_summary == {}
    assert info.class_names == ("W", "N1", "N2", "N3", "REM")


def test_bundle_with_changed_weights_is_refused(tmp_path):
    """Weights replaced after export (same shapes) no longer match the recorded SHA-256: refused."""
    save_bundle(create_model("coresleep_tiny"), tmp_path, name="coresleep_tiny", sequence_length=11)
    torch.manual_seed(5)
    torch.save(create_model("coresleep_tiny").state_dict(), tmp_path / WEIGHTS_FILE)
    with pytest.raises(ValueError, match="its SHA-256 differs from the one model.json records"):
        load_bundle(tmp_path)
