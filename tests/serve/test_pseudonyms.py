"""Records name input files relative to their cohort, never by absolute path, and a single file can
be named by a hash of its content (`--id-from hash`): no output then carries its file name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from scoring_factory import make_run, truncate  # tests/serve is on sys.path
from somnray.core.errors import ConfigError
from somnray.core.storage import relative_uri, resolve
from somnray.data.discovery import recorded_entry
from somnray.data.manifest import ManifestEntry
from somnray.data.profiles import load_profile
from somnray.jobs.cli import main
from somnray.serve.cohort import collect_recordings, content_id

#: A clinic-style file name that identifies someone.
PATIENT_FILE = "Jane-Doe-1961-night.edf"


def _all_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in sorted(folder.rglob("*")) if p.is_file())


def test_relative_uri_never_gives_an_absolute_local_path(tmp_path):
    """Local files are relative to the folder (with .. outside it); object-store files under the
    folder are relative, others keep their URI."""
    assert relative_uri(str(tmp_path / "c" / "a" / "n.edf"), str(tmp_path / "c")) == "a/n.edf"
    assert relative_uri(f"file://{tmp_path}/x/n.edf", tmp_path / "c") == "../x/n.edf"
    assert relative_uri("s3://bkt/cohort/a/n.edf", "s3://bkt/cohort") == "a/n.edf"
    assert relative_uri("s3://bkt/other/n.edf", "s3://bkt/cohort") == "s3://bkt/other/n.edf"
    entry = ManifestEntry("r1", "s1", str(tmp_path / "c" / "r1.edf"), str(tmp_path / "h" / "r1.xml"))
    assert recorded_entry(entry, tmp_path / "c") == ManifestEntry("r1", "s1", "r1.edf", "../h/r1.xml")


def test_collected_recordings_are_named_relative_or_by_hash(synth_cohort, tmp_path):
    """A manifest's absolute and relative rows and a folder's files get relative names; a single
    file with id_from='hash' gets its content hash as id and name; other id_from values are refused."""
    cohort = synth_cohort("sleep-edf", n_nights=2, hours=1.0, seed=41)
    first, second = cohort.entries
    site = tmp_path / "site"
    shutil.copytree(cohort.path, site / "nights")
    (site / "m.csv").write_text("recording_id,subject_id,psg\n"
                                f"a,s1,{site / 'nights' / first.psg}\nb,s2,nights/{second.psg}\n")
    prof = load_profile("sleep-edf")
    named = collect_recordings(str(site / "m.csv"), prof)
    assert [name for _, name in named] == [f"nights/{first.psg}", f"nights/{second.psg}"]
    assert [name for _, name in collect_recordings(str(site / "nights"), prof)] == sorted(
        e.psg for e in cohort.entries)
    patient = tmp_path / PATIENT_FILE
    shutil.copy(cohort.path / first.psg, patient)
    [(entry, name)] = collect_recordings(str(patient), prof, id_from="hash")
    assert entry.recording_id == entry.subject_id == name == content_id(resolve(str(patient)))
    assert name.startswith("sha256-") and len(name) == len("sha256-") + 12
    with pytest.raises(ConfigError) as err:
        collect_recordings(str(patient), prof, id_from="stem")
    assert err.value.errors == ["must be one of ['name', 'hash'], got 'stem'"]


@pytest.mark.integration
def test_score_records_no_absolute_path_and_hash_ids_hide_the_file_name(ray_local, synth_cohort,
                                                                        tmp_path, capsys):
    """`somnray score --id-from hash` on a patient-named file and a manifest with an absolute row:
    outputs and the listed rejects name files relative to the manifest or by hash, never by the
    patient's file name or an absolute path."""
    cohort = synth_cohort("sleep-edf", n_nights=1, hours=1.0, seed=43)
    site = tmp_path / "clinic"
    site.mkdir()
    shutil.copy(cohort.path / cohort.entries[0].psg, site / "bad.edf")
    truncate(site / "bad.edf")
    (site / "m.csv").write_text(f"recording_id,subject_id,psg\nbad,s1,{site / 'bad.edf'}\n")
    shutil.copy(cohort.path / cohort.entries[0].psg, site / PATIENT_FILE)
    truncate(site / PATIENT_FILE, keep_bytes=5000)
    hashed = content_id(resolve(str(site / PATIENT_FILE)))
    out = tmp_path / "scored"
    code = main(["score", str(make_run(tmp_path / "run")), str(site / "m.csv"), str(site / PATIENT_FILE),
                 "--out", str(out), "--id-from", "hash", "--no-progress"])
    stdout = capsys.readouterr().out
    assert code == 2
    rejected = sorted(line.strip() for line in stdout.splitlines() if line.strip().startswith("rejected"))
    assert [r.split(": ", 2)[:2] for r in rejected] == [["rejected bad", "bad.edf"],
                                                         [f"rejected {hashed}", hashed]]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(["bad", hashed])
    text = _all_text(out) + stdout
    assert "Jane-Doe" not in text and str(site) not in text


@pytest.mark.integration
def test_prepare_records_inputs_relative_to_the_manifest(ray_local, synth_cohort, tmp_path):
    """entries.csv, manifest.json and the reject files name inputs relative to the manifest's
    folder, even for rows given as absolute paths; the dataset version is unchanged by it."""
    from somnray.data import prepare_cohort
    from somnray.data.dataset import dataset_version
    from somnray.data.discovery import load_manifest

    cohort = synth_cohort("sleep-edf", n_nights=1, hours=1.0, seed=47)
    site = tmp_path / "clinic"
    shutil.copytree(cohort.path, site)
    good = cohort.entries[0]
    (site / "Jane-Doe.edf").write_text("not a recording\n")
    (site / "m.csv").write_text("recording_id,subject_id,psg,hypnogram\n"
                                f"{good.recording_id},s1,{site / good.psg},{good.hypnogram}\n"
                                f"bad,s2,{site / 'Jane-Doe.edf'},{site / good.hypnogram}\n")
    result = prepare_cohort(str(site / "m.csv"), "sleep-edf", str(tmp_path / "out"), num_workers=1,
                            progress=False)
    assert (result.prepared, result.rejected) == (1, 1)
    assert result.version == dataset_version(load_manifest(str(site / "m.csv"), cohort.profile), cohort.profile)
    ds = Path(resolve(result.dataset_uri).path)
    assert (ds / "entries.csv").read_text().splitlines()[1:] == [
        f"{good.recording_id},s1,{good.psg},{good.hypnogram},,", f"bad,s2,Jane-Doe.edf,{good.hypnogram},,"]
    doc = json.loads((ds / "manifest.json").read_text())
    assert [(e["psg"], e["hypnogram"]) for e in doc["entries"]] == [(good.psg, good.hypnogram),
                                                                   ("Jane-Doe.edf", good.hypnogram)]
    [reject] = doc["rejected"]
    assert reject["source"] == "Jane-Doe.edf" and reject["reason"].startswith("Jane-Doe.edf: not an EDF/BDF")
    reject_file = json.loads((ds / "rejects" / "bad.json").read_text())
    assert (reject_file["psg"], reject_file["hypnogram"]) == ("Jane-Doe.edf", good.hypnogram)
    assert str(site) not in _all_text(ds)


def test_scoring_rejects_name_files_as_recorded_and_quote_no_exception_text(run_dir, tmp_path, monkeypatch):
    """A missing file is rejected under its recorded name, and a reader failing unexpectedly with
    a message quoting the file is rejected by the exception's type alone."""
    from somnray.scoring.scorer import Scorer
    from somnray.serve import cohort
    from somnray.serve.inference import ModelSpec, scoring_profile

    spec = ModelSpec.of(Scorer.load(str(run_dir), device="cpu", precision="fp32"))
    profiles = {"p": scoring_profile(spec)}
    folder = tmp_path / "Jane-Doe-files"
    folder.mkdir()
    (folder / "night.edf").write_bytes(b"0" * 512)

    def row(name: str) -> dict:
        return cohort.prepare_entry_for_scoring(
            {"recording_id": "r", "psg": str(folder / name), "source": name, "profile_key": "p"},
            spec=spec, profiles=profiles)

    gone = row("gone.edf")
    assert (gone["status"], gone["reason"]) == ("rejected", "gone.edf: file not found")

    def leaky_reader(*args, **kwargs):
        raise ValueError("bad header field 'Jane Doe 1961'")

    monkeypatch.setattr(cohort, "prepare_for_scoring", leaky_reader)
    odd = row("night.edf")
    assert (odd["status"], odd["reason"], odd["error_type"]) == (
        "rejected", "night.edf: unexpected ValueError", "ValueError")
