"""Channel fallbacks: an ordered list of alternatives per modality, or their average."""

from __future__ import annotations

import numpy as np
import pytest
from psg_factory import patch_signal_header, sine, write_edf

from somnray.core.errors import RecordingError
from somnray.data.dataset import PreparedDataset
from somnray.data.manifest import ManifestEntry
from somnray.data.pipeline import manifest_document, prepare_entry
from somnray.data.profiles import CohortProfile, load_profile
from somnray.data.recording import prepare_recording

SECONDS = 150.0


def _profile(**eeg) -> CohortProfile:
    """generic with an EEG of C4-A1 (primary) plus the given keys, no trimming, no normalisation."""
    data = load_profile("generic").model_dump()
    data["channels"] = {"eeg": {"aliases": ["C4-A1"], "band": None, **eeg},
                        "eog": {"aliases": ["E1-M2"], "band": None}}
    data["trimming"] = {"rule": "none"}
    data["normalization"] = "none"
    return CohortProfile.model_validate(data)


def _night(path, **signals):
    chans = {"E1-M2": (sine(1, 100, SECONDS, seed=2), 100.0)}
    chans.update({k: (v, 100.0) for k, v in signals.items()})
    return write_edf(path, chans, record_s=30, annotations=[(0, 30, "W"), (30, 120, "N2")])


def _prepare(path, profile):
    return prepare_recording(path, None, profile, recording_id="rec-1", subject_id="s1")


C3 = sine(9, 100, SECONDS, seed=3)
C4 = sine(11, 100, SECONDS, seed=4)
FALLBACKS = [{"aliases": ["C3-A2"]}, {"aliases": ["C3"], "reference": ["A2"]}]


def test_missing_primary_falls_back_to_the_next_alternative(tmp_path):
    """Without C4-A1, C3-A2 is used; the info names it and a warning says why."""
    rec = _prepare(_night(tmp_path / "x.edf", **{"C3-A2": C3}), _profile(fallbacks=FALLBACKS))
    assert rec.info["channels"]["eeg"]["label"] == "C3-A2"
    assert rec.info["channels"]["eeg"]["fallback"] == 1
    assert ("channel 'eeg': not found: no signal matches its aliases ['C4-A1']; the file has "
            "signals ['E1-M2', 'C3-A2']; fallback 1 'C3-A2' is used") in rec.info["warnings"]
    np.testing.assert_allclose(rec.signals["eeg"].ravel(), C3, atol=0.02)


def test_unusable_primary_falls_back(tmp_path):
    """A C4-A1 whose header gives no scale is passed over for C3-A2, with the reason."""
    path = patch_signal_header(_night(tmp_path / "x.edf", **{"C4-A1": C4, "C3-A2": C3}), 112, 1, "-500")
    rec = _prepare(path, _profile(fallbacks=FALLBACKS))
    assert rec.info["channels"]["eeg"]["label"] == "C3-A2"
    assert ("channel 'eeg': (signal 'C4-A1') is unusable: physical minimum equals physical "
            "maximum (-500 uV): the header gives no scale from digital to physical values; "
            "fallback 1 'C3-A2' is used") in rec.info["warnings"]


def test_fallback_can_be_a_derivation(tmp_path):
    """With only monopolar C3 and A2, the second fallback derives C3 − A2."""
    a2 = sine(0.5, 100, SECONDS, amplitude=5, seed=5)
    rec = _prepare(_night(tmp_path / "x.edf", C3=C3, A2=a2), _profile(fallbacks=FALLBACKS))
    facts = rec.info["channels"]["eeg"]
    assert (facts["label"], facts["reference"], facts["fallback"]) == ("C3", "A2", 2)
    np.testing.assert_allclose(rec.signals["eeg"].ravel(), C3 - a2, atol=0.02)


def test_primary_present_uses_it_without_fallback_facts(tmp_path):
    """When the primary signal is usable the facts are what they were before fallbacks existed."""
    rec = _prepare(_night(tmp_path / "x.edf", **{"C4-A1": C4, "C3-A2": C3}), _profile(fallbacks=FALLBACKS))
    assert rec.info["channels"]["eeg"] == {"label": "C4-A1", "native_sfreq": 100.0, "unit": "uV",
                                           "band": None, "epochs_unavailable": 0}


def test_average_of_the_available_alternatives(tmp_path):
    """combine: average takes the per-epoch mean of C4-A1 and C3-A2 and names both."""
    rec = _prepare(_night(tmp_path / "x.edf", **{"C4-A1": C4, "C3-A2": C3}),
                   _profile(fallbacks=FALLBACKS, combine="average"))
    assert rec.info["channels"]["eeg"]["averaged"] == ["C4-A1", "C3-A2"]
    np.testing.assert_allclose(rec.signals["eeg"].ravel(), (C3 + C4) / 2, atol=0.02)


def test_average_uses_each_alternative_where_it_is_available(tmp_path):
    """An epoch where C4-A1 is flat takes C3-A2 alone; the others average both."""
    c4 = C4.copy()
    c4[3000:6000] = 0.0  # epoch 1 disconnected
    rec = _prepare(_night(tmp_path / "x.edf", **{"C4-A1": c4, "C3-A2": C3}),
                   _profile(fallbacks=FALLBACKS, combine="average"))
    assert rec.available["eeg"].all()
    np.testing.assert_allclose(rec.signals["eeg"][1], C3[3000:6000], atol=0.02)
    np.testing.assert_allclose(rec.signals["eeg"][2], (C3 + C4)[6000:9000] / 2, atol=0.02)


def test_no_usable_alternative_lists_every_one(tmp_path):
    """A required modality with no usable alternative is rejected naming each alternative's problem."""
    with pytest.raises(RecordingError) as info:
        _prepare(_night(tmp_path / "x.edf", C3=C3), _profile(fallbacks=FALLBACKS))
    assert info.value.reason == (
        "required channel 'eeg' not found: no signal matches its aliases ['C4-A1']; the file has "
        "signals ['E1-M2', 'C3']; fallback 1 not found: no signal matches its aliases ['C3-A2']; "
        "the file has signals ['E1-M2', 'C3']; fallback 2 (signal 'C3') lacks its reference: no "
        "signal matches ['A2']; the file has signals ['E1-M2', 'C3']")



def test_manifest_json_names_the_signal_each_recording_used(tmp_path):
    """Per recording, manifest.json's ``channels`` names the signal read for each modality: the
    primary C4-A1 for one night, the fallback derivation C3 - A2 for the other."""
    profile = _profile(fallbacks=FALLBACKS)
    a2 = sine(0.5, 100, SECONDS, amplitude=5, seed=5)
    nights = {"n1": _night(tmp_path / "n1.edf", **{"C4-A1": C4}),
              "n2": _night(tmp_path / "n2.edf", C3=C3, A2=a2)}
    entries = [ManifestEntry(recording_id=rid, subject_id=rid, psg=str(path), hypnogram=None,
                             profile=profile.name) for rid, path in nights.items()]
    dataset = PreparedDataset.create(str(tmp_path / "out"), profile, entries)
    statuses = [prepare_entry(e.as_dict(), profile=profile, dataset_uri=dataset.uri) for e in entries]
    assert [s["status"] for s in statuses] == ["ok", "ok"]
    doc = manifest_document(entries, statuses, profile, dataset.version, dataset, pending=0, seconds=0.0)
    assert {r["recording_id"]: r["channels"] for r in doc["recordings"]} == {
        "n1": {"eeg": "C4-A1", "eog": "E1-M2"}, "n2": {"eeg": "C3 - A2", "eog": "E1-M2"}}
    fallback = next(r for r in doc["recordings"] if r["recording_id"] == "n2")
    assert set(fallback) == {"recording_id", "subject_id", "n_epochs", "status", "warnings", "channels"}
    assert fallback["warnings"][0].endswith("; fallback 2 'C3 - A2' is used")


@pytest.mark.parametrize("normalization, statistic", [("none", "std"), ("zscore", "std"), ("robust", "iqr/1.349")])
def test_amplitude_scale_is_recorded_in_physical_units(tmp_path, normalization, statistic):
    """info["amplitude"] holds each modality's physical scale in µV (the std z-scoring divides by,
    the std too when signals stay in µV, IQR/1.349 for robust): ×10 input gives ×10 scale, while
    normalised signals stay the same."""
    profile = _profile().model_copy(update={"normalization": normalization})
    eog = (sine(1, 100, SECONDS, seed=2), 100.0)
    nights = {gain: write_edf(tmp_path / f"x{gain}.edf", {"E1-M2": eog, "C4-A1": (C4 * gain, 100.0)},
                              record_s=30, physical_range=(-5000.0, 5000.0),
                              annotations=[(0, 30, "W"), (30, 120, "N2")]) for gain in (1, 10)}
    base, loud = (_prepare(nights[g], profile) for g in (1, 10))
    amp = base.info["amplitude"]["eeg"]
    assert amp["unit"] == "uV" and amp["statistic"] == statistic
    expected = C4.std() if statistic == "std" else np.subtract(*np.percentile(C4, [75, 25])) / 1.349
    assert amp["scale"] == pytest.approx(expected, rel=0.05)
    assert loud.info["amplitude"]["eeg"]["scale"] == pytest.approx(10 * amp["scale"], rel=0.01)
    assert loud.info["amplitude"]["eog"]["scale"] == pytest.approx(base.info["amplitude"]["eog"]["scale"])
    if normalization != "none":
        np.testing.assert_allclose(loud.signals["eeg"], base.signals["eeg"], atol=0.01)
