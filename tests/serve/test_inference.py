"""Scoring one recording: what serving knows of a model, preparing an unscored night, per-epoch outputs.

Loading a bundle and the device and precision policy are :mod:`somnray.scoring`'s (tests/scoring).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scoring_factory import TEST_LENGTH, identifying_hits, make_run  # tests/serve is on sys.path

from somnray.core.errors import ConfigError, RecordingError
from somnray.data.profiles import CohortProfile, load_profile
from somnray.data.synth import SYNTH_IDENTIFYING_STRINGS, ArtefactConfig
from somnray.models import create_model
from somnray.scoring.scorer import Scorer
from somnray.serve.inference import ModelSpec, missing_modality_policy, modalities_used_labels, score_recording
from somnray.serve.outputs import read_epochs, write_night_outputs

EPOCHS_1H = 120


@pytest.fixture(scope="module")
def scorer(run_dir):
    """The run's model, loaded once for the module, in fp32 for reproducible numbers."""
    return Scorer.load(str(run_dir), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def night(synth_cohort):
    """A 1-h synthetic Sleep-EDF night with EEG and EOG."""
    cohort = synth_cohort("sleep-edf", n_nights=1, hours=1.0)
    return cohort.path / cohort.entries[0].psg


@pytest.fixture(scope="module")
def night_without_eog(synth_cohort):
    """A 1-h synthetic Sleep-EDF night whose file has no EOG channel at all."""
    cohort = synth_cohort("sleep-edf", n_nights=1, hours=1.0, seed=3,
                          artefacts=ArtefactConfig(missing_eog_fraction=1.0))
    return cohort.path / cohort.entries[0].psg


def test_model_spec_of_a_loaded_run(run_dir):
    """The spec of a run's model: its bundle's profile, its family's policy, length and checkpoint."""
    spec = ModelSpec.of(Scorer.load(str(run_dir), precision="fp32"))
    assert spec.profile_name == "sleep-edf" and spec.policy == "drop"
    assert spec.name == "coresleep_tiny" and spec.modalities == ("eeg", "eog")
    assert spec.model_info.checkpoint_uri == f"file://{run_dir}/model"


def test_default_profile_comes_from_the_training_export(tmp_path):
    """Training's export records ``cohort_profile``: it becomes the default scoring profile."""
    from somnray.models.bundle import save_bundle

    save_bundle(create_model("coresleep_tiny"), tmp_path / "model", name="coresleep_tiny",
                sequence_length=TEST_LENGTH, extra={"cohort_profile": "shhs"})
    assert ModelSpec.of(Scorer.load(str(tmp_path))).profile_name == "shhs"
    save_bundle(create_model("coresleep_tiny"), tmp_path / "bare", name="coresleep_tiny",
                sequence_length=TEST_LENGTH)
    assert ModelSpec.of(Scorer.load(str(tmp_path / "bare"))).profile_name == "generic"


def test_policy_per_model_family():
    """CoRe-Sleep drops a missing modality, CIMSleepNet imputes it, MC2SleepNet needs its one input."""
    assert missing_modality_policy(create_model("coresleep_tiny")) == "drop"
    assert missing_modality_policy(create_model("cimsleepnet_tiny")) == "impute"
    assert missing_modality_policy(create_model("mc2sleepnet_tiny")) == "require"


def test_modalities_used_labels():
    """Labels name what each epoch's stage came from, per policy, and 'none' for empty epochs."""
    avail = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=bool)
    mods = ("eeg", "eog")
    assert list(modalities_used_labels(mods, avail, "drop")) == ["eeg+eog", "eeg", "eog", "none"]
    assert list(modalities_used_labels(mods, avail, "impute")) == [
        "eeg+eog", "eeg+eog(imputed)", "eeg(imputed)+eog", "none"]


def test_score_a_night_epoch_by_epoch(scorer, night):
    """One 30-s epoch per row over the whole night, stages = argmax, stats agree with the stages."""
    scored = score_recording(scorer, night, recording_id="night-a")
    assert scored.n_epochs == EPOCHS_1H
    assert np.array_equal(scored.epoch_index, np.arange(EPOCHS_1H))
    assert len(scored.hypnogram()) == EPOCHS_1H
    assert np.allclose(scored.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(scored.stages, scored.probabilities.argmax(axis=1))
    assert set(scored.modalities_used) == {"eeg+eog"} and scored.available.all()
    stats = scored.sleep_stats()
    sleep = np.isin(scored.stages, [1, 2, 3, 4])
    assert stats.n_tib_epochs == EPOCHS_1H
    assert stats.tst_min == pytest.approx(sleep.sum() * 0.5)
    assert stats.tib_min == pytest.approx(EPOCHS_1H * 0.5)
    assert scored.model.name == "coresleep_tiny" and scored.model.checkpoint_uri == scorer.uri


def test_scoring_is_deterministic_and_stride_averages(scorer, night):
    """The same night scores identically twice; a shorter stride averages overlapping windows."""
    a = score_recording(scorer, night, recording_id="n")
    b = score_recording(scorer, night, recording_id="n")
    c = score_recording(scorer, night, recording_id="n", stride=TEST_LENGTH // 2)
    assert np.array_equal(a.probabilities, b.probabilities)
    assert c.n_epochs == a.n_epochs and not np.allclose(a.probabilities, c.probabilities)


def test_night_without_eog_is_scored_and_flagged_everywhere(scorer, night_without_eog, tmp_path):
    """No EOG in the file: EEG alone scores every epoch, and every output says EOG was absent."""
    scored = score_recording(scorer, night_without_eog, recording_id="no-eog")
    assert scored.n_epochs == EPOCHS_1H
    assert set(scored.modalities_used) == {"eeg"}
    assert not scored.available[:, 1].any() and scored.quality["missing_modality"].all()
    assert (scored.stages >= 0).all()
    files = write_night_outputs(scored, tmp_path)
    table, _ = read_epochs(files["epochs"])
    assert not any(table.column("available_eog").to_pylist())
    assert set(table.column("modalities_used").to_pylist()) == {"eeg"}
    doc = json.loads((tmp_path / "no-eog" / "no-eog_sleep_stats.json").read_text())
    assert doc["modalities"]["available_fraction"]["eog"] == 0.0
    assert doc["modalities"]["used_epochs"] == {"eeg": EPOCHS_1H}
    assert doc["quality"]["flag_epochs"]["missing_modality"] == EPOCHS_1H
    assert identifying_hits(tmp_path, SYNTH_IDENTIFYING_STRINGS) == []


def test_cimsleepnet_reports_the_imputed_modality(tmp_path, night_without_eog):
    """CIMSleepNet imagines the absent EOG: epochs say 'eeg+eog(imputed)' and carry the flag."""
    run = make_run(tmp_path / "cim", model="cimsleepnet_tiny")
    model = Scorer.load(str(run), precision="fp32")
    scored = score_recording(model, night_without_eog, recording_id="cim")
    assert set(scored.modalities_used) == {"eeg+eog(imputed)"}
    assert scored.quality["imputed_modality"].all()


def test_channel_map_overrides_the_profile(scorer, night):
    """channel_map names the EDF signals: a generic profile then finds Sleep-EDF's labels."""
    scored = score_recording(scorer, night, recording_id="mapped", profile="generic",
                             channel_map={"eeg": "EEG Pz-Oz", "eog": "EOG horizontal"})
    assert scored.n_epochs == EPOCHS_1H and scored.available.all()
    default = score_recording(scorer, night, recording_id="mapped")
    assert not np.allclose(scored.probabilities, default.probabilities)  # Pz-Oz, not Fpz-Cz


def test_channel_map_errors(scorer, night):
    """A mapped label the file lacks is a RecordingError; a modality the model lacks a ConfigError."""
    with pytest.raises(RecordingError, match="required channel 'eog' not found") as err:
        score_recording(scorer, night, recording_id="r1", channel_map={"eog": "EOG missing"})
    assert err.value.recording_id == "r1"
    with pytest.raises(ConfigError, match="'emg' is not used by model"):
        score_recording(scorer, night, recording_id="r1", channel_map={"emg": "EMG submental"})


def test_a_modality_missing_from_the_profile_names_both_ways_to_map_it(tmp_path, night):
    """A model that needs EEG, scored with a profile without one: the error names the CLI's
    --channel-map option and the HTTP channel_map field."""
    scorer = Scorer.load(str(make_run(tmp_path / "mc2", model="mc2sleepnet_tiny")), precision="fp32")
    data = load_profile("sleep-edf").model_dump()
    data.update(name="eog-only", channels={"eog": data["channels"]["eog"]})
    with pytest.raises(ConfigError) as err:
        score_recording(scorer, night, recording_id="r1", profile=CohortProfile.model_validate(data))
    assert err.value.errors == [
        "model 'mc2sleepnet_tiny' needs modality 'eeg' but profile 'eog-only' has no channel for it; "
        "add it to the profile, or name its EDF signal with --channel-map eeg=LABEL (somnray score) "
        'or the channel_map field {"eeg": "LABEL"} (HTTP)']


def test_bad_files_raise_recording_errors(scorer, night, tmp_path):
    """Not an EDF, a truncated EDF, no usable modality: RecordingError naming the source."""
    with pytest.raises(RecordingError, match="not an EDF/BDF file") as err:
        score_recording(scorer, b"this is not a polysomnogram" * 20, recording_id="x",
                        psg_source="upload.edf")
    assert err.value.source == "upload.edf" and err.value.recording_id == "x"
    cut = tmp_path / "cut.edf"
    cut.write_bytes(night.read_bytes()[:5000])
    with pytest.raises(RecordingError, match="truncated"):
        score_recording(scorer, cut, recording_id="x")
    with pytest.raises(RecordingError, match="none of the model's modalities"):
        score_recording(scorer, night, recording_id="x", profile="shhs")


def test_unsafe_recording_id_is_refused(scorer, night):
    """A recording id that is not a safe file name never reaches the reader or the outputs."""
    with pytest.raises(RecordingError, match="cannot name output files"):
        score_recording(scorer, night, recording_id="../escape")
