"""The manifest CSV: malformed CSV named as such, optional lights columns, unchanged when absent."""

from __future__ import annotations

import pytest

from somnray.core.errors import ConfigError
from somnray.data.dataset import dataset_version
from somnray.data.manifest import ManifestEntry, format_manifest_csv, parse_manifest_csv
from somnray.data.profiles import load_profile
from somnray.jobs.cli import main

HEADER = "recording_id,subject_id,psg"


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_manifest_csv(text, "m.csv")
    assert info.value.source == "m.csv"
    return info.value.errors


def test_unbalanced_quote_is_a_malformed_manifest():
    """A quote never closed would swallow the next rows into one path: reported with its line."""
    text = f'{HEADER}\nr1,s1,r1.edf\nr2,s2,"r2.edf\nr3,s3,r3.edf\n'
    assert _problems(text) == [
        "malformed manifest: line 3: a quoted field opened on this line is never closed "
        "(unbalanced '\"'); everything after it would be one value"]


def test_text_after_a_closing_quote_is_a_malformed_manifest():
    """`"r1.edf"x` is not CSV: the line is named instead of reading the path as r1.edfx."""
    assert _problems(f'{HEADER}\nr1,s1,"r1.edf"x\n') == [
        "malformed manifest: line 2: malformed CSV (',' expected after '\"')"]


def test_quoted_fields_with_commas_still_read():
    """Balanced quotes keep working: a path with a comma is one value."""
    (entry,) = parse_manifest_csv(f'{HEADER}\nr1,s1,"a,b.edf"\n', "m.csv")
    assert entry.psg == "a,b.edf"


def test_lights_columns_are_read_as_seconds():
    """lights_off/lights_on become floats on the entry, in its dict and in the CSV written back."""
    text = f"{HEADER},lights_off,lights_on\nr1,s1,r1.edf,1800,30600\nr2,s2,r2.edf,,\n"
    first, second = parse_manifest_csv(text, "m.csv")
    assert (first.lights_off, first.lights_on) == (1800.0, 30600.0)
    assert first.as_dict()["lights_off"] == 1800.0
    assert "lights_off" not in second.as_dict()
    assert format_manifest_csv([first, second]).splitlines() == [
        "recording_id,subject_id,psg,hypnogram,profile,split,lights_off,lights_on",
        "r1,s1,r1.edf,,,,1800.0,30600.0",
        "r2,s2,r2.edf,,,,,"]


def test_bad_lights_values_are_listed():
    """Non-numbers, negative times and lights-on before lights-off are each reported by line."""
    text = f"{HEADER},lights_off,lights_on\nr1,s1,r1.edf,22:30,\nr2,s2,r2.edf,-5,\nr3,s3,r3.edf,600,300\n"
    assert _problems(text) == [
        "line 2: lights_off '22:30' is not a number of seconds from the recording start (>= 0)",
        "line 3: lights_off '-5' is not a number of seconds from the recording start (>= 0)",
        "line 4: lights_on 300 s is not after lights_off 600 s"]


def test_a_manifest_without_lights_is_described_as_before():
    """No lights columns: the CSV written back and the dataset version ignore the new fields."""
    entries = parse_manifest_csv(f"{HEADER}\nr1,s1,r1.edf\n", "m.csv")
    assert format_manifest_csv(entries) == "recording_id,subject_id,psg,hypnogram,profile,split\nr1,s1,r1.edf,,,\n"
    assert entries[0].as_dict() == {"recording_id": "r1", "subject_id": "s1", "psg": "r1.edf",
                                    "hypnogram": None, "profile": None, "split": None}
    profile = load_profile("sleep-edf")
    assert dataset_version(entries, profile) == dataset_version([ManifestEntry("r1", "s1", "r1.edf")], profile)


def test_prepare_cli_reports_the_unbalanced_quote(tmp_path, capsys):
    """`somnray prepare` on a manifest with an unbalanced quote exits 1 with one message, no traceback."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(f'{HEADER}\nr1,s1,"r1.edf\nr2,s2,r2.edf\n')
    code = main(["prepare", str(manifest), "--profile", "sleep-edf", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert (f"{manifest}: 1 problem(s):\n  - malformed manifest: line 2: a quoted field opened on "
            "this line is never closed") in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
