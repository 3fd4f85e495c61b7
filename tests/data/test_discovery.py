"""Cohort discovery: pairing files by profile rules, and loading CSV/Parquet manifests."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from somnray.core.errors import ConfigError
from somnray.data.discovery import discover, load_manifest
from somnray.data.profiles import load_profile


@pytest.fixture(scope="module")
def sleep_edf():
    """The shipped Sleep-EDF profile."""
    return load_profile("sleep-edf")


def touch(folder, *names):
    """Create empty files (discovery looks at names only)."""
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_sleep_edf_pairing_by_key(tmp_path, sleep_edf):
    """PSGs pair with hypnograms whose suffix letters differ; ids and subjects come from the regexes."""
    touch(tmp_path, "SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf", "sub/SC4012E0-PSG.edf",
          "sub/SC4012EC-Hypnogram.edf", "README.txt")
    entries = discover(str(tmp_path), sleep_edf)
    assert [(e.recording_id, e.subject_id) for e in entries] == [("SC4001E0", "SC400"), ("SC4012E0", "SC401")]
    assert entries[0].psg == f"file://{tmp_path}/SC4001E0-PSG.edf"
    assert entries[1].hypnogram == f"file://{tmp_path}/sub/SC4012EC-Hypnogram.edf"
    assert all(e.profile == "sleep-edf" for e in entries)


def test_missing_hypnogram_warns_and_keeps_entry(tmp_path, sleep_edf, caplog):
    """A PSG without hypnogram is kept with hypnogram=None and a warning naming the file."""
    touch(tmp_path, "SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf", "SC4002E0-PSG.edf")
    with caplog.at_level(logging.WARNING, logger="somnray.data.discovery"):
        entries = discover(str(tmp_path), sleep_edf)
    assert entries[1].recording_id == "SC4002E0" and entries[1].hypnogram is None
    assert "SC4002E0-PSG.edf: no hypnogram" in caplog.text


def test_duplicate_keys_and_empty_folders_are_config_errors(tmp_path, sleep_edf):
    """Two hypnograms for one PSG, or a folder with no PSG, raise ConfigError with the files named."""
    touch(tmp_path, "SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf", "SC4001EH-Hypnogram.edf")
    with pytest.raises(ConfigError, match="pairing key 'SC4001' is also claimed by"):
        discover(str(tmp_path), sleep_edf)
    empty = tmp_path / "empty"
    touch(empty, "notes.txt")
    with pytest.raises(ConfigError, match=r"no PSG file matches pairing.psg_glob '\*-PSG.edf'"):
        discover(str(empty), sleep_edf)


def test_shhs_pairing(tmp_path):
    """SHHS EDF/XML files pair by their numeric id, one subject per night."""
    touch(tmp_path, "edfs/shhs1-200001.edf", "xml/shhs1-200001-nsrr.xml", "edfs/shhs1-200002.edf",
          "xml/shhs1-200002-nsrr.xml")
    entries = discover(str(tmp_path), load_profile("shhs"))
    assert [(e.recording_id, e.subject_id) for e in entries] == [
        ("shhs1-200001", "200001"), ("shhs1-200002", "200002")]
    assert entries[0].hypnogram.endswith("xml/shhs1-200001-nsrr.xml")


def test_csv_manifest_relative_paths(tmp_path):
    """A CSV manifest's relative paths resolve against its own folder."""
    (tmp_path / "m.csv").write_text("recording_id,subject_id,psg,hypnogram,split\n"
                                    "r1,s1,data/r1.edf,data/r1.xml,train\n")
    [e] = load_manifest(str(tmp_path / "m.csv"))
    assert e.psg == f"{tmp_path}/data/r1.edf" and e.hypnogram == f"{tmp_path}/data/r1.xml"
    assert e.split == "train"


def test_parquet_manifest(tmp_path):
    """A Parquet manifest is validated like a CSV one (nulls become empty optional cells)."""
    pq.write_table(pa.table({"recording_id": ["a", "b"], "subject_id": ["1", "2"],
                             "psg": ["/d/a.edf", "/d/b.edf"], "hypnogram": ["/d/a.xml", None]}),
                   tmp_path / "m.parquet")
    entries = load_manifest(str(tmp_path / "m.parquet"))
    assert [e.hypnogram for e in entries] == ["/d/a.xml", None]


def test_bad_manifests_name_file_and_problem(tmp_path, sleep_edf):
    """Malformed manifests, unsafe ids, unknown types and missing inputs are ConfigErrors."""
    (tmp_path / "bad.csv").write_text("recording_id,psg\nr1,x.edf\n")
    with pytest.raises(ConfigError, match=r"(?s)bad.csv.*missing required column\(s\) \['subject_id'\]"):
        load_manifest(str(tmp_path / "bad.csv"))
    (tmp_path / "ids.csv").write_text("recording_id,subject_id,psg\n../evil,s,x.edf\n")
    with pytest.raises(ConfigError, match="(?s)'../evil'.*not a portable file name"):
        load_manifest(str(tmp_path / "ids.csv"))
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ConfigError, match="unknown manifest type"):
        load_manifest(str(tmp_path / "m.txt"))
    with pytest.raises(ConfigError, match="no such file or folder"):
        load_manifest(str(tmp_path / "absent.csv"))
    with pytest.raises(ConfigError, match="a cohort profile is needed"):
        load_manifest(str(tmp_path))


@pytest.mark.integration
def test_discover_on_s3(s3_server, sleep_edf):
    """Discovery pairs files stored under an s3:// prefix and returns s3:// URIs."""
    from somnray.core.storage import resolve

    bucket = s3_server.make_bucket()
    for name in ("SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf"):
        resolve(f"{bucket}/cohort/{name}").atomic_write_bytes(b"x")
    [e] = load_manifest(f"{bucket}/cohort", sleep_edf)
    assert e.psg == f"{bucket}/cohort/SC4001E0-PSG.edf"
    assert e.hypnogram == f"{bucket}/cohort/SC4001EC-Hypnogram.edf"
