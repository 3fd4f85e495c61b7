"""The review page's answers (somnray.serve.review_page) on a real review, without Ray: the queue,
a night, an epoch's traces, saving corrections, and what is refused (bad input, escapes)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from review_factory import make_review_site  # tests/serve is on sys.path

from somnray.core.errors import ConfigError
from somnray.core.storage import StorageRoots
from somnray.serve.config import ServeConfig
from somnray.serve.outputs import read_epochs
from somnray.serve.review_files import read_corrections, read_table
from somnray.serve.review_page import (
    MAX_CONTEXT,
    STATIC_FILES,
    TRACE_BUCKET,
    ReviewPages,
    ReviewProblem,
    page_file,
)

NAME = "scored"


@pytest.fixture(scope="module")
def site(synth_cohort, tmp_path_factory):
    """Two scored 1-h nights with their review, inside a storage root."""
    return make_review_site(tmp_path_factory.mktemp("review-site"), synth_cohort("sleep-edf", n_nights=2, hours=1.0))


@pytest.fixture
def pages(site):
    """The review pages over the site's scored root, confined to the site."""
    return ReviewPages({NAME: f"file://{site.scored}"}, StorageRoots([str(site.root)]))


@pytest.fixture
def top(site):
    """The id of the night ranked first in the review."""
    return read_table(site.scored, "nights.csv")[0]["recording_id"]


def _problem(call, *args) -> ReviewProblem:
    with pytest.raises(ReviewProblem) as info:
        call(*args)
    return info.value


def test_nights_follow_the_queue_with_correction_counts(site, pages):
    """The nights come in nights.csv order with its columns, and each says how many epochs are corrected."""
    doc = pages.nights(NAME)
    rows = read_table(site.scored, "nights.csv")
    assert [n["recording_id"] for n in doc["nights"]] == [r["recording_id"] for r in rows]
    assert [n["rank"] for n in doc["nights"]] == [1, 2]
    assert {"expected_errors", "reasons", "n_queued"} <= set(doc["nights"][0])
    assert all(n["n_corrected"] == 0 for n in doc["nights"])
    assert pages.reviews() == {"reviews": [{"review": NAME}]}


def test_a_night_carries_every_epoch_and_its_queue_in_rank_order(site, pages, top):
    """One night: each epoch's stage, probabilities (4 decimals), confidence, flags and availability,
    and the night's queued epochs most uncertain first."""
    table, meta = read_epochs(site.scored / top / f"{top}_epochs.parquet")
    doc = pages.night(NAME, top)
    n = table.num_rows
    assert doc["n_epochs"] == n and doc["epoch"] == table.column("epoch").to_pylist()
    probs = np.asarray(doc["probabilities"], dtype=float)
    assert probs.shape == (n, 5)
    assert doc["stage"] == table.column("stage").to_pylist()
    np.testing.assert_allclose(probs, np.stack([table.column(f"prob_{s}").to_numpy() for s in doc["stages"]], 1),
                               atol=1e-4)
    np.testing.assert_allclose(doc["confidence"], probs.max(axis=1), atol=1e-4)
    assert doc["modalities"] == list(meta["modalities"]) and all(len(v) == n for v in doc["available"].values())
    assert {"unscored", "missing_modality", "low_confidence"} <= set(doc["flags"])
    queue = [r for r in read_table(site.scored, "queue.csv") if r["recording_id"] == top]
    assert [q["epoch"] for q in doc["queue"]] == [r["epoch"] for r in sorted(queue, key=lambda r: r["rank"])]
    assert doc["queue"] and doc["corrections"] == {}


def test_traces_hold_the_epoch_and_its_neighbours_as_min_max_pairs(site, pages, top):
    """An epoch's traces: the epoch and one neighbour each side, 2 points per bucket of 100-Hz samples,
    the extremes of the prepared signal, and a display scale per modality."""
    from somnray.data.dataset import PreparedDataset
    from somnray.serve.review_files import read_summary

    epoch = pages.night(NAME, top)["queue"][0]["epoch"]
    doc = pages.traces(NAME, top, epoch)
    assert doc["epochs"] == [e for e in (epoch - 1, epoch, epoch + 1) if 0 <= e < 120]
    assert doc["points_per_s"] == 2 * 100 // TRACE_BUCKET
    rec = PreparedDataset.at(site.scored / "review" / read_summary(site.scored)["prepared"]).read(top)
    row = rec["epoch_index"].tolist().index(epoch)
    for m, sig in doc["signals"].items():
        here = np.asarray(sig["epochs"][doc["epochs"].index(epoch)])
        assert here.size == 2 * 3000 // TRACE_BUCKET and sig["scale"] > 0
        raw = np.asarray(rec[m][row], dtype=np.float32)
        assert here.max() == pytest.approx(raw.max(), abs=1e-3) and here.min() == pytest.approx(raw.min(), abs=1e-3)
    assert _problem(pages.traces, NAME, top, epoch, MAX_CONTEXT + 1).status == 400
    assert _problem(pages.traces, NAME, top, 10_000).status == 404


def test_saving_merges_clears_and_writes_the_import_format(site, pages, top):
    """Saves merge into the night's corrections file (read back by read_corrections), null clears an
    epoch, and the answer is everything now saved."""
    try:
        first = pages.save(NAME, top, {"3": "N2", "4": "R"})
        assert first["corrections"] == {"3": "N2", "4": "REM"} and first["saved"] == 2
        second = pages.save(NAME, top, {"4": None, "7": "n3"})
        assert second["corrections"] == {"3": "N2", "7": "N3"}
        assert read_corrections(site.scored, top) == {3: 2, 7: 3}
        assert (site.scored / top / f"{top}_corrections.csv").read_text().splitlines() == [
            "epoch,onset_s,stage", "3,90,N2", "7,210,N3"]
        assert pages.night(NAME, top)["corrections"] == {"3": "N2", "7": "N3"}
        assert next(n for n in pages.nights(NAME)["nights"] if n["recording_id"] == top)["n_corrected"] == 2
    finally:
        (site.scored / top / f"{top}_corrections.csv").unlink(missing_ok=True)


@pytest.mark.parametrize("changes, problem", [
    ({"500": "N2"}, "epoch 500 is not an epoch of this night"),
    ({"x": "N2"}, "epoch 'x' is not a number"),
    ({"3": "UNS"}, "epoch 3: unknown stage 'UNS'"),
    ({"3": 2}, "epoch 3: the stage must be a name"),
    ({}, "with at least one epoch"),
    (["3", "N2"], "with at least one epoch"),
])
def test_bad_saves_are_refused_and_write_nothing(site, pages, top, changes, problem):
    """Unknown epochs, stages that are not stage names and malformed bodies are a 400 naming the problem;
    no corrections file appears."""
    err = _problem(pages.save, NAME, top, changes)
    assert err.status == 400 and problem in err.message
    assert not (site.scored / top / f"{top}_corrections.csv").exists()


def test_escapes_and_unknown_names_get_answers_without_paths(site, pages, tmp_path):
    """A malformed id is a 400, an unknown review or night and a night folder linked outside the root a
    404 worded like a missing night; no answer names a server path."""
    outside = tmp_path / "outside"
    (outside / "evil").mkdir(parents=True)
    (outside / "evil" / "evil_epochs.parquet").write_bytes(
        (site.scored / "SC4001E0" / "SC4001E0_epochs.parquet").read_bytes())
    os.symlink(outside / "evil", site.scored / "evil")
    try:
        cases = {
            "dotdot": (_problem(pages.night, NAME, ".."), 400),
            "slash": (_problem(pages.night, NAME, "../../etc/passwd"), 400),
            "review": (_problem(pages.nights, "etc"), 404),
            "missing": (_problem(pages.night, NAME, "nobody"), 404),
            "linked out": (_problem(pages.night, NAME, "evil"), 404),
            "save linked out": (_problem(pages.save, NAME, "evil", {"0": "W"}), 404),
        }
        for what, (err, status) in cases.items():
            assert err.status == status, what
            assert str(site.root) not in err.message and str(tmp_path) not in err.message, what
        assert cases["linked out"][0].message == cases["missing"][0].message.replace("nobody", "evil")
        assert not (outside / "evil" / "evil_corrections.csv").exists()
    finally:
        (site.scored / "evil").unlink()


def test_review_roots_must_lie_under_the_storage_roots_and_differ_by_name(tmp_path):
    """The service refuses a review root outside its storage roots, or two that the page would name alike."""
    with pytest.raises(ConfigError, match="outside the storage roots"):
        ServeConfig.from_mapping({"run_uri": "x", "storage_roots": [str(tmp_path / "a")],
                                  "review_roots": [str(tmp_path / "b")]})
    with pytest.raises(ConfigError, match="repeated: \\['scored'\\]"):
        ServeConfig.from_mapping({"run_uri": "x", "storage_roots": [str(tmp_path)],
                                  "review_roots": [str(tmp_path / "a" / "scored"), str(tmp_path / "b" / "scored")]})
    config = ServeConfig(run_uri="x", storage_roots=(str(tmp_path),), review_roots=(str(tmp_path / "scored"),))
    assert config.reviews == {"scored": f"file://{tmp_path}/scored"}


def test_the_page_serves_its_own_files_only():
    """index.html, review.js and review.css come from the package; any other name is a 404."""
    assert b"<canvas id=\"hypnogram\"" in page_file("index.html")
    for name in STATIC_FILES:
        assert page_file(name)
    for name in ("../app.py", "app.py", "review_page.py", "", "%2e%2e"):
        assert _problem(page_file, name).status == 404
