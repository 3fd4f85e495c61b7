"""Channel maps per call: labels, derivations and ordered alternatives, and the signal used in outputs."""

from __future__ import annotations

import json

import pytest

from somnray.core.errors import ConfigError
from somnray.data.profiles import ChannelAlternative
from somnray.jobs.cmd_score import parse_channel_map
from somnray.scoring.scorer import Scorer
from somnray.serve.inference import channel_map_alternatives, score_recording
from somnray.serve.outputs import write_night_outputs


@pytest.fixture(scope="module")
def scorer(run_dir):
    return Scorer.load(str(run_dir), precision="fp32")


@pytest.fixture(scope="module")
def night(synth_cohort):
    cohort = synth_cohort("sleep-edf", n_nights=1, hours=1.0)
    return cohort.path / cohort.entries[0].psg


def test_channel_map_values_parse_into_alternatives():
    """A label, a derivation and a list become the alternatives tried in order."""
    alts, problems = channel_map_alternatives({
        "eeg": ["C4-A1", "C3-A2"], "eog": {"signal": "E1", "reference": "E2"}, "emg": "Chin"})
    assert problems == []
    assert alts == {"eeg": [ChannelAlternative(aliases=["C4-A1"]), ChannelAlternative(aliases=["C3-A2"])],
                    "eog": [ChannelAlternative(aliases=["E1"], reference=["E2"])],
                    "emg": [ChannelAlternative(aliases=["Chin"])]}


def test_bad_channel_map_values_are_named():
    """Each malformed entry gets its own line naming the modality and the value."""
    _, problems = channel_map_alternatives({"eeg": [], "eog": {"signal": "E1", "ref": "E2"}, "emg": 3})
    assert problems == [
        "channel_map['eeg']: an empty list names no signal",
        "channel_map['eog']: a derivation is an object {\"signal\": \"<EDF label>\", \"reference\": "
        "\"<EDF label>\"}, got {'signal': 'E1', 'ref': 'E2'}",
        "channel_map['emg']: expected an EDF label, a derivation {\"signal\": ..., \"reference\": ...} "
        "or a list of them (tried in order), got 3"]


def test_cli_channel_map_forms():
    """--channel-map takes MOD=LABEL[,LABEL] pairs and JSON objects, merged into one map."""
    assert parse_channel_map([]) is None
    assert parse_channel_map(["eeg=C4-A1,C3-A2", "emg = Chin",
                              '{"eog": {"signal": "E1", "reference": "E2"}}']) == {
        "eeg": ["C4-A1", "C3-A2"], "emg": "Chin", "eog": {"signal": "E1", "reference": "E2"}}
    with pytest.raises(ConfigError) as info:
        parse_channel_map(["eeg", "eeg=C4", "eeg=C3", "{eog"])
    assert info.value.errors == [
        "'eeg': expected MODALITY=LABEL[,LABEL...] such as eeg=C4-A1,C3-A2, or a JSON object",
        "modality 'eeg' is mapped twice",
        "'{eog' is not valid JSON (Expecting property name enclosed in double quotes)"]


def test_derivation_and_fallback_are_used_and_shown_in_the_outputs(scorer, night, tmp_path):
    """A missing first alternative falls back; the signals used are in the night and its stats JSON."""
    scored = score_recording(scorer, night, recording_id="mapped", profile="generic", channel_map={
        "eeg": ["C4-A1", "EEG Pz-Oz"], "eog": {"signal": "EOG horizontal", "reference": "EEG Fpz-Cz"}})
    assert scored.channels == {"eeg": "EEG Pz-Oz", "eog": "EOG horizontal - EEG Fpz-Cz"}
    assert scored.available.all()
    write_night_outputs(scored, tmp_path)
    doc = json.loads((tmp_path / "mapped" / "mapped_sleep_stats.json").read_text())
    assert doc["modalities"]["channels"] == {"eeg": "EEG Pz-Oz", "eog": "EOG horizontal - EEG Fpz-Cz"}
