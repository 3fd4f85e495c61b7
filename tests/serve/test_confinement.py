"""A confined cohort run (the service's cohort jobs) opens nothing outside its storage roots.

Each attack is a manifest inside the root whose rows try to reach a file outside it; the run must
stop before anything is opened, with one line per offending row that neither quotes the file nor
says whether it exists.  No Ray: the refusal comes before any cluster work.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from scoring_factory import copy_cohort  # tests/serve is on sys.path
from somnray.core.errors import ConfigError
from somnray.core.storage import StorageRoots
from somnray.serve.cohort import OUTSIDE_ROOTS, score_cohort
from somnray.serve.config import CohortScoringOptions

#: A credentials-like file's secret: must never reach a message.
CANARY = "AKIA-SVCSEC-CANARY-7f3a"
CREDENTIALS = f"[default]\naws_access_key_id = {CANARY}\naws_secret_access_key = {CANARY}-secret\n"
HEADER = "recording_id,subject_id,psg,hypnogram,profile\n"


@pytest.fixture
def site(synth_cohort, tmp_path):
    """A storage root holding a cohort copy, and outside it an EDF night and a credentials file."""
    cohort = synth_cohort("sleep-edf", n_nights=1, hours=1.0, seed=21)
    root = copy_cohort(cohort.path, tmp_path / "root")
    psg = root / cohort.entries[0].psg
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(psg, outside / "night.edf")
    (outside / "credentials").write_text(CREDENTIALS)
    return root, psg, outside


def _score(run_dir, root: Path, rows: str, name: str = "attack.csv"):
    """Score a manifest of ``rows`` confined to ``root``; returns the ConfigError it must raise."""
    manifest = root / name
    manifest.write_text(HEADER + rows)
    options = CohortScoringOptions(storage_roots=StorageRoots([str(root)]), progress=False)
    with pytest.raises(ConfigError) as err:
        score_cohort(str(run_dir), str(manifest), str(root / "scored"), options)
    assert not (root / "scored").exists(), "nothing may be written before the rows are checked"
    return err.value


def _good_row(psg: Path) -> str:
    return f"good,s1,{psg.name},,\n"


def test_row_naming_etc_passwd_is_refused(run_dir, site):
    """A row whose PSG is /etc/passwd stops the job before it is read."""
    root, psg, _ = site
    err = _score(run_dir, root, _good_row(psg) + "evil,s2,/etc/passwd,,\n")
    assert err.errors == [f"recording 'evil': psg '/etc/passwd': {OUTSIDE_ROOTS}"]
    assert "root:" not in str(err)


def test_absolute_path_outside_the_root_is_refused_like_a_missing_one(run_dir, site):
    """An absolute path to an existing EDF outside the root gets the words a missing one gets."""
    root, psg, outside = site
    there, missing = outside / "night.edf", outside / "nothing-here.edf"
    err = _score(run_dir, root, _good_row(psg) + f"evil,s2,{there},,\nghost,s3,{missing},,\n")
    assert err.errors == [f"recording 'evil': psg '{there}': {OUTSIDE_ROOTS}",
                          f"recording 'ghost': psg '{missing}': {OUTSIDE_ROOTS}"]


def test_dot_dot_escape_is_refused(run_dir, site):
    """A relative row climbing out of the manifest's folder with ../ is refused."""
    root, psg, outside = site
    err = _score(run_dir, root, _good_row(psg) + "evil,s2,../outside/night.edf,,\n")
    assert err.errors == [f"recording 'evil': psg '{outside / 'night.edf'}': {OUTSIDE_ROOTS}"]


def test_url_encoded_escape_is_refused(run_dir, site):
    """Percent-encoded dots (a relative row and a file:// URI) cannot climb out either."""
    root, psg, _ = site
    encoded = f"file://{root}/%2e%2e/outside/night.edf"
    err = _score(run_dir, root, _good_row(psg) + f"evil,s2,%2e%2e/outside/night.edf,,\nevil2,s3,{encoded},,\n")
    assert err.errors == [f"recording 'evil': psg '{root}/%2e%2e/outside/night.edf': {OUTSIDE_ROOTS}",
                          f"recording 'evil2': psg '{encoded}': {OUTSIDE_ROOTS}"]


def test_symlink_inside_the_root_pointing_outside_is_refused(run_dir, site):
    """A link inside the root to a file outside is judged by its target, and its target is not named."""
    root, psg, outside = site
    os.symlink(outside / "night.edf", root / "link.edf")
    err = _score(run_dir, root, _good_row(psg) + "evil,s2,link.edf,,\n")
    assert err.errors == [f"recording 'evil': psg '{root / 'link.edf'}': {OUTSIDE_ROOTS}"]
    assert str(outside) not in str(err)


def test_profile_column_naming_a_credentials_file_outside_is_refused_unread(run_dir, site):
    """A profile naming a credentials file outside the root is refused; its content never shows."""
    root, psg, outside = site
    creds = outside / "credentials"
    err = _score(run_dir, root, f"good,s1,{psg.name},,{creds}\n")
    assert err.errors == [f"recording 'good': profile '{creds}': not a shipped profile "
                          f"(generic, shhs, shhs-5463, shhs-5463-amplitude, sleep-edf, sleep-edf-20, sleep-edf-78) and {OUTSIDE_ROOTS}"]
    assert CANARY not in str(err)


def test_unparsable_profile_inside_the_root_is_reported_without_its_content(run_dir, site):
    """A profile file inside the root that is not YAML is reported by position, never quoted."""
    root, psg, _ = site
    (root / "creds.yaml").write_text(CREDENTIALS)
    err = _score(run_dir, root, f"good,s1,{psg.name},,{root / 'creds.yaml'}\n")
    assert err.errors == [f"{root / 'creds.yaml'}: not valid YAML at line 2, column 1: "
                          "expected '<document start>', but found '<scalar>'"]
    assert CANARY not in str(err)


def test_inputs_and_output_outside_the_roots_are_refused(run_dir, site, tmp_path):
    """The manifest and the output are checked too, before the model is even loaded."""
    root, _, outside = site
    options = CohortScoringOptions(storage_roots=StorageRoots([str(root)]), progress=False)
    with pytest.raises(ConfigError) as err:
        score_cohort(str(tmp_path / "no-run"), str(outside / "credentials"), str(outside / "out"), options)
    assert err.value.errors == [f"input '{outside / 'credentials'}': {OUTSIDE_ROOTS}",
                                f"output '{outside / 'out'}': not under the storage roots"]
    assert not (outside / "out").exists()


def test_storage_roots_resolve_links_encodings_and_dots(tmp_path):
    """StorageRoots.locate answers by the real location: links followed, %-escapes and '..' refused,
    sibling prefixes and other protocols outside, inside locations returned resolved."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "door")
    os.symlink(root / "a.edf", root / "alias.edf")
    roots = StorageRoots([str(root), "s3://bucket/cohorts"])
    assert roots.locate(f"file://{root}/alias.edf").path == str(root / "a.edf")
    assert roots.locate(str(root / "sub" / "x.csv")).uri == f"file://{root}/sub/x.csv"
    assert roots.locate("s3://bucket/cohorts/a/m.csv").uri == "s3://bucket/cohorts/a/m.csv"
    for uri in (str(root / "door" / "x.edf"), f"{root}/%2e%2e/elsewhere", f"{root}/sub/../../x",
                f"{root}-other/x", "s3://bucket/cohorts/%2E%2E/private", "s3://bucket/other", "/etc/passwd",
                "s3:/bucket/cohorts"):
        assert roots.locate(uri) is None, uri
    assert not StorageRoots([]) and StorageRoots([]).locate(str(root)) is None
