"""Cohort profiles: the shipped YAMLs load, encode the cohort facts, and bad YAML fails loudly."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from pydantic import ValidationError

from somnray.core.errors import ConfigError
from somnray.data.profiles import CohortProfile, list_profiles, load_profile, normalize_label

SHIPPED = ["generic", "shhs", "shhs-5463", "shhs-5463-amplitude", "sleep-edf", "sleep-edf-20", "sleep-edf-78"]


def test_list_profiles_names_the_shipped_yamls():
    """list_profiles returns exactly the shipped profiles."""
    assert list_profiles() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads(name):
    """Each shipped profile validates into a frozen CohortProfile with eeg and eog required."""
    profile = load_profile(name)
    assert isinstance(profile, CohortProfile)
    assert profile.name == name
    assert profile.channels["eeg"].required and profile.channels["eog"].required
    with pytest.raises(ValidationError):
        profile.name = "changed"  # frozen: a profile cannot drift after validation


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_yaml_opens_with_a_usage_comment(name):
    """Each shipped YAML starts with a comment saying what it is for and the command to use it."""
    text = resources.files("somnray.data").joinpath("profiles", f"{name}.yaml").read_text()
    head = text.splitlines()[:5]
    assert head[0].startswith("# ")
    assert any("--profile" in line for line in head)


def test_load_profile_accepts_a_path(tmp_path):
    """A YAML path loads like a shipped name."""
    text = resources.files("somnray.data").joinpath("profiles", "shhs.yaml").read_text()
    path = tmp_path / "my-cohort.yaml"
    path.write_text(text.replace("name: shhs", "name: my-cohort"))
    assert load_profile(path).name == "my-cohort"


def test_sleep_edf_profile_facts():
    """sleep-edf: Fpz-Cz/EOG unfiltered, 1-Hz EMG rejected by min_sfreq, R&K map, edges trimming."""
    p = load_profile("sleep-edf")
    assert p.channels["eeg"].aliases == ["EEG Fpz-Cz"] and p.channels["eeg"].band is None
    assert p.channels["eog"].aliases == ["EOG horizontal"] and p.channels["eog"].band is None
    emg = p.channels["emg"]
    assert not emg.required and emg.min_sfreq == 50
    assert p.annotations.format == "edf_annotations"
    assert p.annotations.label_map == {
        "Sleep stage W": 0, "Sleep stage 1": 1, "Sleep stage 2": 2, "Sleep stage 3": 3,
        "Sleep stage 4": 3, "Sleep stage R": 4, "Sleep stage ?": -1, "Movement time": -1}
    assert (p.trimming.rule, p.trimming.edge_minutes) == ("edges", 30)


@pytest.mark.parametrize("psg, hyp, key, subject, rec_id", [
    ("SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf", "SC4001", "SC400", "SC4001E0"),
    ("SC4192E0-PSG.edf", "SC4192EV-Hypnogram.edf", "SC4192", "SC419", "SC4192E0"),
    ("ST7022J0-PSG.edf", "ST7022JM-Hypnogram.edf", "ST7022", "ST702", "ST7022J0"),
])
def test_sleep_edf_pairing_regexes(psg, hyp, key, subject, rec_id):
    """sleep-edf pairs by the first 6 characters; subject = study + characters 3-4; id = first 8."""
    pairing = load_profile("sleep-edf").pairing
    assert re.match(pairing.key_regex, psg).group(1) == key
    assert re.match(pairing.key_regex, hyp).group(1) == key
    assert re.match(pairing.subject_regex, psg).group(1) == subject
    assert re.match(pairing.recording_id_regex, psg).group(1) == rec_id


def test_shhs_profile_facts():
    """shhs: C4-A1 EEG (never the C3-A2 'EEG(sec)'), EOG(L)-EOG(R), bands, NSRR labels, shhs_code."""
    p = load_profile("shhs")
    eeg_keys = {normalize_label(a) for a in p.channels["eeg"].aliases}
    for secondary in ("EEG(sec)", "EEG sec", "EEG2", "EEG 2"):
        assert normalize_label(secondary) not in eeg_keys
    assert "eeg" in eeg_keys
    eog = p.channels["eog"]
    assert eog.aliases == ["EOG(L)"] and eog.reference == ["EOG(R)"] and eog.band == (0.3, 23.0)
    assert p.channels["eeg"].band == (0.3, 40.0)
    assert p.annotations.format == "nsrr_xml"
    assert p.annotations.label_map["Stage 4 sleep|4"] == 3
    assert p.annotations.label_map["REM sleep|5"] == 4
    assert p.annotations.label_map["Unscored|9"] == -1
    assert p.trimming.rule == "shhs_code"
    key = p.pairing.key_regex
    assert re.match(key, "shhs1-200001.edf").group(1) == re.match(key, "shhs1-200001-nsrr.xml").group(1)


def test_generic_profile_maps_aasm_and_rk_labels():
    """generic: AASM and R&K labels map to the five classes, ?/MT to -1."""
    m = load_profile("generic").annotations.label_map
    assert [m[k] for k in ("W", "N1", "N2", "N3", "R", "REM", "S3", "S4", "?", "MT")] == \
        [0, 1, 2, 3, 4, 4, 3, 3, -1, -1]


@pytest.mark.parametrize("variant", ["EOG(L)", "EOG L", "EOGL", "eog-l", " EOG (L) "])
def test_normalize_label_ignores_case_spaces_and_punctuation(variant):
    """Alias matching treats the spellings sites use for one channel as equal."""
    assert normalize_label(variant) == "eogl"


BROKEN = """\
name: broken
description: several mistakes at once
channels:
  eeg:
    aliases: []
    band: [40, 0.3]
    requird: true
annotations:
  format: xml
  label_map: {"W": 0, "N1": 7}
trimming:
  rule: sometimes
normalization: zscore
pairing:
  psg_glob: "*.edf"
  key_regex: "no-group"
  subject_regex: "(["
colour: blue
"""


def test_malformed_profile_reports_every_error_at_once(tmp_path):
    """A YAML with several mistakes gives one ConfigError naming the file and listing each one."""
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    err = info.value
    assert err.source == str(path)
    assert str(path) in str(err)
    joined = "\n".join(err.errors)
    expected = [
        "channels.eeg.aliases: List should have at least 1 item",
        "channels.eeg.band: must be (low, high) with 0 <= low < high in Hz, got [40.0, 0.3]",
        "channels.eeg.requird: unknown key",
        "annotations.format: Input should be 'edf_annotations', 'nsrr_xml', 'csv', 'tsv', 'embedded' or 'edf_signal' (got 'xml')",
        "annotations.label_map: classes must be 0 W, 1 N1, 2 N2, 3 N3, 4 REM or -1 (unscored); got {'N1': 7}",
        "trimming.rule: Input should be 'none', 'edges', 'shhs_code' or 'shhs_paper' (got 'sometimes')",
        "pairing.key_regex: needs a capturing group (group 1 is used); got 'no-group'",
        "pairing.subject_regex: is not a valid regular expression",
        "colour: unknown key",
    ]
    for line in expected:
        assert line in joined, f"missing {line!r} in:\n{joined}"
    assert len(err.errors) == len(expected)


def test_missing_keys_are_reported(tmp_path):
    """Required sections that are absent are named."""
    path = tmp_path / "empty.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert "channels: required key is missing" in info.value.errors
    assert "annotations: required key is missing" in info.value.errors
    assert "pairing: required key is missing" in info.value.errors


def test_yaml_syntax_error_is_a_config_error(tmp_path):
    """Unparseable YAML is a ConfigError naming the file, not a yaml exception."""
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(path)


def test_unknown_profile_name_lists_the_shipped_ones():
    """An unknown name says so and lists the shipped profiles."""
    with pytest.raises(ConfigError) as info:
        load_profile("sleep-edf-typo")
    assert info.value.errors == [
        "no such profile: not a shipped profile name (generic, shhs, shhs-5463, shhs-5463-amplitude, sleep-edf, "
        "sleep-edf-20, "
        "sleep-edf-78) and no file at this path"]


def test_profile_without_required_channel_is_rejected(tmp_path):
    """A profile whose modalities are all optional would accept signal-less recordings."""
    text = resources.files("somnray.data").joinpath("profiles", "sleep-edf.yaml").read_text()
    path = tmp_path / "optional.yaml"
    path.write_text(text.replace("required: true", "required: false"))
    with pytest.raises(ConfigError, match="at least one modality must be required"):
        load_profile(path)


def test_sleep_edf_subject_ids_of_the_two_studies_never_collide():
    """Cassette subject 00 (SC400x) and telemetry subject 00 (ST700x) get different subject ids."""
    regex = load_profile("sleep-edf").pairing.subject_regex
    assert re.match(regex, "SC4001E0-PSG.edf").group(1) != re.match(regex, "ST7001J0-PSG.edf").group(1)


@pytest.mark.parametrize("name, included, excluded", [
    ("sleep-edf-20", ["SC4001E0-PSG.edf", "SC4192E0-PSG.edf"], ["SC4201E0-PSG.edf", "ST7011J0-PSG.edf"]),
    ("sleep-edf-78", ["SC4001E0-PSG.edf", "SC4822G0-PSG.edf"], ["ST7011J0-PSG.edf"]),
])
def test_sleep_edf_cassette_profiles_select_their_subjects(name, included, excluded):
    """sleep-edf-20 keeps SC subjects 00-19 only, sleep-edf-78 every SC night, neither an ST night."""
    from fnmatch import fnmatchcase

    p = load_profile(name)
    assert all(fnmatchcase(f, p.pairing.psg_glob) for f in included)
    assert not any(fnmatchcase(f, p.pairing.psg_glob) for f in excluded)
    assert fnmatchcase(included[0].replace("E0-PSG", "EC-Hypnogram"), p.pairing.hypnogram_glob)
    # everything else is the sleep-edf profile's
    base = load_profile("sleep-edf")
    assert p.channels == base.channels and p.annotations == base.annotations
    assert p.trimming == base.trimming and p.pairing.subject_regex == base.pairing.subject_regex


def test_shhs_5463_is_shhs_with_all_stages_required_and_unscored_epochs_dropped():
    """shhs-5463 differs from shhs only in require_all_stages and dropping unscored epochs."""
    p, base = load_profile("shhs-5463"), load_profile("shhs")
    assert p.require_all_stages and not base.require_all_stages
    assert (p.trimming.rule, p.trimming.unscored) == ("shhs_code", "drop")
    assert base.trimming.unscored == "keep"
    assert p.channels == base.channels and p.annotations == base.annotations and p.pairing == base.pairing


def test_extends_overlays_keys_and_merges_mappings(tmp_path):
    """A profile extending a shipped one changes only what it names; nested mappings merge."""
    path = tmp_path / "my-shhs.yaml"
    path.write_text("extends: shhs\nname: my-shhs\nchannels:\n  eeg:\n    band: [0.5, 35.0]\n")
    p, base = load_profile(path), load_profile("shhs")
    assert p.name == "my-shhs"
    assert p.channels["eeg"].band == (0.5, 35.0) and p.channels["eeg"].aliases == base.channels["eeg"].aliases
    assert p.channels["eog"] == base.channels["eog"] and p.annotations == base.annotations


def test_extends_finds_a_path_beside_the_extending_file(tmp_path):
    """extends: a relative YAML path is looked up beside the profile that names it."""
    (tmp_path / "cohorts").mkdir()
    text = resources.files("somnray.data").joinpath("profiles", "shhs.yaml").read_text()
    (tmp_path / "cohorts" / "base.yaml").write_text(text.replace("name: shhs", "name: base"))
    (tmp_path / "cohorts" / "child.yaml").write_text("extends: base.yaml\nname: child\n")
    assert load_profile(tmp_path / "cohorts" / "child.yaml").name == "child"


def test_circular_extends_is_a_config_error(tmp_path):
    """Two profiles extending each other fail with the chain named, not a recursion error."""
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(ConfigError) as info:
        load_profile(tmp_path / "a.yaml")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert info.value.errors == [f"extends: circular chain {a} -> {b} -> {a}"]


def test_shhs_5463_amplitude_keeps_physical_units_and_nothing_else_changes():
    """shhs-5463-amplitude is shhs-5463 with normalization none (CoRe-Sleep's official pipeline)."""
    p, base = load_profile("shhs-5463-amplitude"), load_profile("shhs-5463")
    assert p.normalization == "none" and base.normalization == "zscore"
    assert p.model_dump(exclude={"name", "description", "normalization"}) == \
        base.model_dump(exclude={"name", "description", "normalization"})
