"""The review walk on real components: synthetic EDF nights scored by ``score_cohort``, the queue and its
prepared signals, EDF+ marks, corrections imported from EDFbrowser-style EDF+ and CSV files, agreement,
and the labelled dataset that fine-tuning accepts."""

from __future__ import annotations

import csv
import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from somnray.core.constants import STAGES
from somnray.data.dataset import PreparedDataset
from somnray.data.hypnograms import read_hypnogram
from somnray.jobs.cli import EXIT_PARTIAL, main
from somnray.review.corrections import STAGE_LABELS, import_corrections
from somnray.review.queue import NIGHT_COLUMNS, QUEUE_COLUMNS, build_review, scored_night_of
from somnray.data.profiles import AnnotationSpec
from somnray.serve import review_files as rf
from somnray.serve.outputs import edf_annotations_bytes, read_epochs

pytestmark = pytest.mark.integration


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def _stages(scored: Path, rid: str) -> np.ndarray:
    table, _ = read_epochs(scored / rid / f"{rid}_epochs.parquet")
    return np.asarray(table["stage"].to_numpy())


def test_queue_writes_the_review_layout(scored: Path, cohort) -> None:
    """nights.csv ranks by expected errors, the queue holds the 10 % least certain epochs with the page's
    columns, each queued night gets EDF+ marks, and summary.json points at a readable prepared dataset."""
    result = build_review(str(scored), str(cohort.manifest), fraction=0.1)
    review = scored / "review"
    nights = _rows(review / "nights.csv")
    assert list(nights[0]) == list(NIGHT_COLUMNS)
    assert [float(n["expected_errors"]) for n in nights] == sorted((float(n["expected_errors"]) for n in nights),
                                                                     reverse=True)
    queue = _rows(review / "queue.csv")
    assert list(queue[0]) == [*QUEUE_COLUMNS, "available_eeg", "available_eog"]
    assert len(queue) == result.queued_epochs == round(0.1 * result.scored_epochs)
    assert [float(q["uncertainty"]) for q in queue] == sorted((float(q["uncertainty"]) for q in queue), reverse=True)
    # Every queued epoch is at least as uncertain as any epoch left out.
    threshold = min(float(q["uncertainty"]) for q in queue)
    for n in nights:
        table, _ = read_epochs(scored / n["recording_id"] / f"{n['recording_id']}_epochs.parquet")
        queued = {int(q["epoch"]) for q in queue if q["recording_id"] == n["recording_id"]}
        assert int(n["n_queued"]) == len(queued)
        probs = np.stack([table[f"prob_{s}"].to_numpy() for s in STAGES], axis=1)
        left = [1 - probs[i].max() for i, e in enumerate(table["epoch"].to_numpy()) if e not in queued]
        assert max(left) <= threshold + 1e-6

    summary = json.loads((review / "summary.json").read_text())
    assert summary["counts"]["queued_epochs"] == len(queue) and summary["options"]["fraction"] == 0.1
    dataset = PreparedDataset.open(review / summary["prepared"])
    queued_ids = sorted({q["recording_id"] for q in queue})
    assert sorted(dataset.recording_ids()) == queued_ids
    rec = dataset.read(queued_ids[0])
    assert rec["eeg"].shape == (rec["n_epochs"], 3000)
    assert {e.recording_id: e.subject_id for e in dataset.entries()} == {
        e.recording_id: e.subject_id for e in cohort.entries if e.recording_id in queued_ids}

    rid = queued_ids[0]
    hyp = read_hypnogram(review / rid / f"{rid}_review.edf",
                         AnnotationSpec(format="edf_annotations", label_map=STAGE_LABELS))
    marks = sorted(o for o, t in zip(hyp.onsets_s, hyp.labels) if t.startswith("Review "))
    assert marks == sorted(float(q["onset_s"]) for q in queue if q["recording_id"] == rid)
    assert any(t.startswith("Sleep stage") for t in hyp.labels)  # the model's stages are there too


def test_a_night_whose_file_changed_is_rejected_and_the_rest_queued(scored: Path, cohort, tmp_path) -> None:
    """An input whose SHA-256 differs from the scored night's is a one-line reject naming it; others go on."""
    inputs = Path(shutil.copytree(cohort.path, tmp_path / "inputs"))
    victim = cohort.entries[0]
    psg = inputs / victim.psg
    data = bytearray(psg.read_bytes())
    data[-1] ^= 1
    psg.write_bytes(bytes(data))
    result = build_review(str(scored), str(inputs / "manifest.csv"), fraction=0.2)
    assert result.exit_code == 2
    [reject] = result.rejects
    assert reject["recording_id"] == victim.recording_id and "not the file" in reject["reason"]
    assert "\n" not in reject["reason"] and str(tmp_path) not in reject["reason"]
    queue = _rows(scored / "review" / "queue.csv")
    assert queue and victim.recording_id not in {q["recording_id"] for q in queue}


def _edfbrowser_file(scored: Path, rid: str, changes: dict[int, int], offset_s: float, out: Path) -> Path:
    """An EDF+ annotation file as a technician saves it: the whole night staged, some stages changed,
    the annotations shifted by ``offset_s`` against the scored grid."""
    table, meta = read_epochs(scored / rid / f"{rid}_epochs.parquet")
    night = scored_night_of(table, {**meta, "start_offset_s": offset_s})
    stages = night.stages.copy()
    for e, s in changes.items():
        stages[e] = s
    night = scored_night_of(table, {**meta, "start_offset_s": offset_s})
    night.stages = stages
    out.write_bytes(edf_annotations_bytes(night, [(offset_s, 30.0, "Review 1: model W p=0.30 (close_call)")]))
    return out


@pytest.mark.parametrize("offset_s", [0.0, 10.0])
def test_edf_import_counts_queued_and_changed_epochs(scored: Path, cohort, tmp_path, offset_s) -> None:
    """EDFbrowser-style EDF+ (also shifted 10 s off the grid: majority per epoch) becomes the night's
    corrections: its queued epochs plus the ones the technician changed; review marks are ignored."""
    build_review(str(scored), str(cohort.manifest), fraction=0.1)
    queue = _rows(scored / "review" / "queue.csv")
    rid = queue[0]["recording_id"]
    model = _stages(scored, rid)
    queued = sorted(int(q["epoch"]) for q in queue if q["recording_id"] == rid)
    outside = next(e for e in range(len(model)) if e not in queued and e > 1)
    changes = {queued[0]: (model[queued[0]] + 1) % 5, outside: (model[outside] + 2) % 5}
    path = _edfbrowser_file(scored, rid, changes, offset_s, tmp_path / f"{rid}.edf")
    [night], rejects = import_corrections(str(scored), [str(path)])
    assert rejects == []
    got = rf.read_corrections(scored, rid)
    assert sorted(got) == sorted({*queued, outside})
    assert got[queued[0]] == changes[queued[0]] and got[outside] == changes[outside]
    assert all(got[e] == model[e] for e in queued[1:])
    assert (night.reviewed, night.changed) == (len(queued) + 1, 2)


def test_import_agreement_dataset_and_finetune_inputs(scored: Path, cohort, run_dir, tmp_path, capsys) -> None:
    """CLI walk: queue → CSV corrections (one unknown night rejected, the rest imported) → agreement table
    and JSON → a labelled dataset (technician stages, -1 elsewhere) that somnray finetune's recipe resolves."""
    from somnray.train.config import load_experiment
    from somnray.train.finetune import finetune_overrides
    from somnray.train.inputs import resolve_split

    assert main(["review", "queue", str(scored), "--inputs", str(cohort.manifest), "--fraction", "0.1",
                 "--no-progress"]) == 0
    queue = _rows(scored / "review" / "queue.csv")
    files, truth = [], {}
    for rid in sorted({q["recording_id"] for q in queue}):
        model = _stages(scored, rid)
        epochs = [int(q["epoch"]) for q in queue if q["recording_id"] == rid]
        truth[rid] = {e: (int(model[e]) + 1) % 5 if k % 2 == 0 else int(model[e]) for k, e in enumerate(epochs)}
        path = tmp_path / f"{rid}_corrections.csv"
        path.write_text(rf.corrections_csv(truth[rid]))
        files.append(str(path))
    (tmp_path / "nobody.csv").write_text("epoch,stage\n0,W\n")
    assert main(["review", "import", str(scored), *files, str(tmp_path / "nobody.csv")]) == EXIT_PARTIAL
    out = capsys.readouterr().out
    assert "rejected nobody.csv: " in out and "no scored night 'nobody'" in out

    assert main(["review", "agreement", str(scored)]) == 0
    assert "Cohen's kappa" in capsys.readouterr().out
    doc = json.loads((scored / "review" / "agreement.json").read_text())
    n = sum(len(t) for t in truth.values())
    changed = sum(sum(1 for k, e in enumerate(t) if k % 2 == 0) for t in truth.values())
    assert doc["n_reviewed"] == n and doc["n_changed"] == changed
    assert doc["accuracy"] == pytest.approx((n - changed) / n)

    assert main(["review", "dataset", str(scored), "--out", str(tmp_path / "store")]) == 0
    uri = capsys.readouterr().out.strip().splitlines()[-1]
    dataset = PreparedDataset.open(uri)
    assert sorted(dataset.recording_ids()) == sorted(truth)
    for rid, t in truth.items():
        rec = dataset.read(rid, ["labels", "epoch_index"])
        labels = dict(zip(rec["epoch_index"].tolist(), rec["labels"].tolist()))
        assert {e: s for e, s in labels.items() if s >= 0} == t
    assert dataset.manifest["class_histogram"]["unscored"] == sum(
        dataset.read(r, ["labels"])["n_epochs"] for r in truth) - n

    # The split written with it is what the docs fine-tune with: someone trains, someone validates
    # (the trainer refuses an empty side), no subject on two sides.
    recipe = str(resources.files("somnray.jobs").joinpath("configs", "finetune_local.yaml"))
    cfg = load_experiment(recipe, finetune_overrides(str(run_dir), uri, None) + ["data.split={name: review}"])
    split = resolve_split(cfg.phases[0].data)
    assert sorted([*split.train, *split.val, *split.test]) == sorted(truth)
    assert split.train and split.val
    assert not set(split.train_subjects) & set(split.val_subjects)
