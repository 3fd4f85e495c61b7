"""Subject-wise, seeded dataset splits (docs/models.md §4.6).

Every protocol works on subjects, never on recordings: all nights of one subject land on the same
side of every boundary (train / validation / test).  Shuffles use ``numpy.random.default_rng(seed)``
over the *sorted* subject ids, so a split depends only on the set of subjects and the seed, not on
manifest order.

* :func:`ratio_split` — the SHHS protocol of CoRe-Sleep and MC²SleepNet: ``n_val_subjects`` (100)
  validation subjects first, then the rest split ``1 - test_fraction`` : ``test_fraction`` (70:30).
  CoRe-Sleep's "three different splits" are seeds 0, 1, 2.
* :func:`kfold_split` — the Sleep-EDF protocols: ``k`` folds of subjects (20 for Sleep-EDF-20, one
  subject per fold; 10 for Sleep-EDF-78); each fold's validation subjects are drawn from its
  training side.
* :func:`manifest_split` — the fixed ``split`` column of a manifest, when the cohort ships one.

A split set is stored as JSON (``splits/<name>.json`` beside a prepared dataset): see
:meth:`somnray.data.dataset.PreparedDataset.write_splits` / :func:`load_splits`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from somnray.core.errors import SplitError

from .manifest import SPLITS, ManifestEntry

#: Version of the split JSON layout.
SPLIT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Split:
    """One train/validation/test partition of a cohort's recordings.

    Parameters
    ----------
    name : str
        Name of the split set it belongs to (``"shhs-seed0"``, ``"edf20-cv"``).
    protocol : {"ratio", "kfold", "manifest", "review"}
        How it was made.
    seed : int or None
        Seed of the shuffle (None for the manifest's fixed split).
    fold : int or None
        Fold index for k-fold splits (0-based), else None.
    n_folds : int or None
        Number of folds for k-fold splits, else None.
    train, val, test : tuple of str
        Sorted recording ids of each part.
    train_subjects, val_subjects, test_subjects : tuple of str
        Sorted subject ids of each part.
    """

    name: str
    protocol: str
    seed: int | None
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    train_subjects: tuple[str, ...]
    val_subjects: tuple[str, ...]
    test_subjects: tuple[str, ...]
    fold: int | None = None
    n_folds: int | None = None
    params: dict[str, Any] = field(default_factory=dict, compare=False)

    def part(self, name: str) -> tuple[str, ...]:
        """Recording ids of part ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in SPLITS:
            raise SplitError(f"unknown split part {name!r}; expected one of {list(SPLITS)}")
        return getattr(self, name)

    def assignment(self) -> dict[str, str]:
        """recording id → part name."""
        return {rid: part for part in SPLITS for rid in self.part(part)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists instead of tuples)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Split":
        """Inverse of :meth:`to_dict`."""
        kw = dict(d)
        for k in ("train", "val", "test", "train_subjects", "val_subjects", "test_subjects"):
            kw[k] = tuple(kw.get(k, ()))
        kw["params"] = dict(kw.get("params") or {})
        return cls(**kw)


RecordingsLike = Mapping[str, str] | Iterable[ManifestEntry]


def _subjects(recordings: RecordingsLike) -> dict[str, list[str]]:
    """subject id → sorted recording ids, from a mapping recording→subject or manifest entries."""
    pairs = (recordings.items() if isinstance(recordings, Mapping)
             else ((e.recording_id, e.subject_id) for e in recordings))
    by_subject: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for rid, sid in pairs:
        if rid in seen:
            raise SplitError(f"recording id {rid!r} is listed twice")
        seen.add(rid)
        by_subject[str(sid)].append(str(rid))
    if not by_subject:
        raise SplitError("no recordings to split")
    return {s: sorted(r) for s, r in by_subject.items()}


def _make(name: str, protocol: str, seed: int | None, by_subject: Mapping[str, list[str]],
          parts: Mapping[str, Sequence[str]], **extra: Any) -> Split:
    def recs(subjects: Sequence[str]) -> tuple[str, ...]:
        return tuple(sorted(r for s in subjects for r in by_subject[s]))

    return Split(
        name=name, protocol=protocol, seed=seed,
        train=recs(parts["train"]), val=recs(parts["val"]), test=recs(parts["test"]),
        train_subjects=tuple(sorted(parts["train"])), val_subjects=tuple(sorted(parts["val"])),
        test_subjects=tuple(sorted(parts["test"])), **extra,
    )


def ratio_split(recordings: RecordingsLike, test_fraction: float = 0.3, n_val_subjects: int = 100,
                seed: int = 0, name: str | None = None) -> Split:
    """Validation subjects first, then a train/test split of the remaining subjects by ratio.

    Parameters
    ----------
    recordings : mapping of str to str, or iterable of ManifestEntry
        recording id → subject id (or manifest entries carrying both).
    test_fraction : float
        Fraction of the non-validation subjects sent to test (0.3 = the papers' 70:30).
    n_val_subjects : int
        Subjects moved to validation before the split (100 in the SHHS protocol).
    seed : int
        Shuffle seed (CoRe-Sleep's three splits: 0, 1, 2).
    name : str, optional
        Split set name; default ``ratio-seed<seed>``.

    Raises
    ------
    SplitError
        Fractions out of range, or fewer subjects than the split needs (the message says how many
        were asked for and how many exist).
    """
    if not 0.0 < test_fraction < 1.0:
        raise SplitError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if n_val_subjects < 0:
        raise SplitError(f"n_val_subjects must be >= 0, got {n_val_subjects}")
    by_subject = _subjects(recordings)
    n = len(by_subject)
    if n < n_val_subjects + 2:
        raise SplitError(
            f"asked for {n_val_subjects} validation subject(s) plus at least one train and one "
            f"test subject, but the cohort has {n} subject(s); lower n_val_subjects")
    order = _shuffled(by_subject, seed)
    val, rest = order[:n_val_subjects], order[n_val_subjects:]
    n_test = min(max(1, int(round(test_fraction * len(rest)))), len(rest) - 1)
    test, train = rest[:n_test], rest[n_test:]
    return _make(name or f"ratio-seed{seed}", "ratio", seed, by_subject,
                 {"train": train, "val": val, "test": test},
                 params={"test_fraction": test_fraction, "n_val_subjects": n_val_subjects})


def kfold_split(recordings: RecordingsLike, k: int, seed: int = 0, n_val_subjects: int = 2,
                name: str | None = None) -> list[Split]:
    """Subject-wise k-fold cross-validation; fold ``i`` tests on the ``i``-th group of subjects.

    Parameters
    ----------
    recordings : mapping of str to str, or iterable of ManifestEntry
        recording id → subject id (or manifest entries carrying both).
    k : int
        Number of folds (20 for Sleep-EDF-20: one subject per fold; 10 for Sleep-EDF-78).
    seed : int
        Seed of the subject permutation and of each fold's validation draw.
    n_val_subjects : int
        Validation subjects drawn from each fold's training side (2 ≈ CIMSleepNet's 4 Sleep-EDF
        recordings); 0 for none.
    name : str, optional
        Split set name; default ``kfold<k>-seed<seed>``.

    Returns
    -------
    list of Split
        ``k`` splits; every subject is in exactly one fold's test part.

    Raises
    ------
    SplitError
        ``k < 2``, more folds than subjects, or too few training subjects to draw validation
        subjects from.
    """
    if k < 2:
        raise SplitError(f"k-fold needs k >= 2, got k={k}")
    if n_val_subjects < 0:
        raise SplitError(f"n_val_subjects must be >= 0, got {n_val_subjects}")
    by_subject = _subjects(recordings)
    n = len(by_subject)
    if k > n:
        raise SplitError(f"asked for {k} folds but the cohort has only {n} subject(s); "
                         f"use at most {n} folds")
    order = _shuffled(by_subject, seed)
    folds = [list(f) for f in np.array_split(np.array(order, dtype=object), k)]
    smallest_train = n - max(len(f) for f in folds)
    if n_val_subjects > smallest_train - 1:
        raise SplitError(
            f"asked for {n_val_subjects} validation subject(s) per fold, but with {k} folds of "
            f"{n} subject(s) a fold's training side has only {smallest_train}; at least one must "
            f"stay for training, so use n_val_subjects <= {max(smallest_train - 1, 0)}")
    name = name or f"kfold{k}-seed{seed}"
    out = []
    for i, test in enumerate(folds):
        train_side = [s for s in order if s not in set(test)]
        # A separate stream per fold, derived from the seed: folds are independent of each other.
        rng = np.random.default_rng([seed, i])
        val_idx = set(rng.choice(len(train_side), size=n_val_subjects, replace=False).tolist())
        val = [s for j, s in enumerate(train_side) if j in val_idx]
        train = [s for j, s in enumerate(train_side) if j not in val_idx]
        out.append(_make(name, "kfold", seed, by_subject, {"train": train, "val": val, "test": test},
                         fold=i, n_folds=k, params={"n_val_subjects": n_val_subjects}))
    return out


def manifest_split(entries: Iterable[ManifestEntry], name: str = "manifest") -> Split:
    """The fixed split the manifest's ``split`` column defines.

    Raises
    ------
    SplitError
        An entry has no split, or one subject's nights are in different parts.
    """
    entries = list(entries)
    missing = [e.recording_id for e in entries if e.split is None]
    if missing:
        raise SplitError(f"{len(missing)} recording(s) have no 'split' in the manifest "
                         f"(e.g. {missing[:5]}); use a ratio or k-fold split instead")
    by_subject = _subjects(entries)
    part_of: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        part_of[e.subject_id].add(e.split)  # type: ignore[arg-type]
    straddling = {s: sorted(p) for s, p in part_of.items() if len(p) > 1}
    if straddling:
        raise SplitError(f"the manifest puts nights of one subject in different parts: {straddling}")
    parts = {p: [s for s, ps in part_of.items() if p in ps] for p in SPLITS}
    return _make(name, "manifest", None, by_subject, parts)


def _shuffled(by_subject: Mapping[str, list[str]], seed: int) -> list[str]:
    subjects = sorted(by_subject)
    perm = np.random.default_rng(seed).permutation(len(subjects))
    return [subjects[i] for i in perm]


def assign(entries: Iterable[ManifestEntry], split: Split) -> dict[str, str | None]:
    """recording id → part (``train``/``val``/``test``) for ``entries``; None if not in the split."""
    where = split.assignment()
    return {e.recording_id: where.get(e.recording_id) for e in entries}


def check_disjoint(split: Split) -> None:
    """Raise :class:`SplitError` if a recording or a subject is in two parts."""
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = set(getattr(split, a)) & set(getattr(split, b))
        subj = set(getattr(split, f"{a}_subjects")) & set(getattr(split, f"{b}_subjects"))
        if both or subj:
            raise SplitError(f"split {split.name!r}: {a} and {b} share recordings {sorted(both)[:5]} "
                             f"/ subjects {sorted(subj)[:5]}")


def splits_to_json(splits: Sequence[Split]) -> str:
    """A split set (one split, or the folds of a k-fold) as JSON text."""
    if not splits:
        raise SplitError("no splits to write")
    first = splits[0]
    doc = {"format_version": SPLIT_FORMAT_VERSION, "name": first.name, "protocol": first.protocol,
           "seed": first.seed, "folds": [s.to_dict() for s in splits]}
    return json.dumps(doc, indent=2) + "\n"


def splits_from_json(text: str, source: str = "<splits>") -> list[Split]:
    """Inverse of :func:`splits_to_json`."""
    try:
        doc = json.loads(text)
        return [Split.from_dict(d) for d in doc["folds"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise SplitError(f"{source}: not a somnray split file ({exc})") from None


def load_splits(uri: str, storage_options: Mapping[str, Any] | None = None) -> list[Split]:
    """Read a split file (a URI, or ``<dataset_uri>/splits/<name>.json``)."""
    from somnray.core.storage import resolve

    loc = resolve(uri, storage_options)
    return splits_from_json(loc.read_text(), loc.uri)
