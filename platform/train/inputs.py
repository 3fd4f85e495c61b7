"""The training input pipeline: windows of ``L`` epochs cut from prepared recordings.

A prepared dataset stores one row per recording (its whole epoch sequence, see
:mod:`somnray.data.schema`); windows are cut at load time, always inside one recording
(docs/models.md §2.6 item 8), so one stored dataset serves every sequence length.

* Training: each pass over the training recordings starts every recording's window grid at a
  random offset in ``[0, L)``, so window boundaries differ from pass to pass. The offset comes
  from ``seed``, the recording's index and the pass number: reproducible, whatever the order in
  which Ray executes the reads.
* Evaluation: every window on the grid ``0, stride, 2·stride, ...`` plus one window ending at
  the last epoch, so every epoch is scored; with ``stride < L`` an epoch is scored several times
  and :func:`average_window_probabilities` averages them.
* A recording shorter than ``L`` gives one window padded at the end with label -1 and
  availability False.

Each window carries ``recording_index`` (position in the sorted recording ids of its part) and
``start`` (epoch offset in the stored sequence), so predictions map back to epochs, and
``drop_key``: its slice of the recording's missing-modality drop keys, drawn once per recording
from ``missing.seed`` and the recording id before the windows are cut
(:func:`somnray.train.missing.recording_drop_keys`); the worker turns them into the mask at the
step's rate.

Layers: pure numpy functions (:func:`training_starts`, :func:`evaluation_starts`,
:func:`cut_windows`, :func:`to_sleep_batch`) unit-tested without Ray; :func:`window_dataset` chains
them on Ray Data (a small dataset of ``(recording, pass)`` items whose ``map_batches`` reads each
recording file and emits its windows); the worker iterates its shard with ``iter_torch_batches``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch

from somnray.core.constants import EPOCH_SAMPLES, IGNORE_INDEX, N_CLASSES
from somnray.core.errors import ConfigError
from somnray.data import schema
from somnray.data.dataset import PreparedDataset
from somnray.models.base import SleepBatch, SleepStagingModel
from somnray.models.inference import window_starts

from .config import DataConfig, MissingConfig
from .missing import NEVER, MissingSimulator

#: Columns of a window batch besides one signal column per modality.
WINDOW_COLUMNS = ("present", "drop_key", "labels", "scored", "recording_index", "start", "pass_index")


# ------------------------------------------------------------------------------------------------
# splits
# ------------------------------------------------------------------------------------------------
def resolve_split(data: DataConfig, storage_options: Mapping[str, Any] | None = None):
    """The :class:`~somnray.data.splits.Split` a data section names.

    Raises
    ------
    ConfigError
        Naming the dataset (or split file) and what is wrong: unknown split file, fold out of
        range, too few subjects.
    """
    from somnray.data import splits as sp

    dataset = PreparedDataset.open(data.dataset, storage_options)
    cfg = data.split
    if cfg.name == "manifest":
        try:
            return sp.manifest_split(dataset.entries())
        except sp.SplitError as exc:
            raise ConfigError(data.dataset, [f"data.split: {exc}"]) from None
    if cfg.name is not None:
        uri = dataset.split_uri(cfg.name)
        try:
            folds = dataset.split(cfg.name)
        except FileNotFoundError:
            raise ConfigError(uri, [f"data.split.name: no split file {cfg.name!r} with this dataset "
                                    f"(use 'manifest', or write one with somnray split)"]) from None
        if cfg.fold >= len(folds):
            raise ConfigError(uri, [f"data.split.fold: {cfg.fold} out of range; the file has {len(folds)} fold(s)"])
        return folds[cfg.fold]
    entries = dataset.entries()
    extra = {} if cfg.n_val_subjects is None else {"n_val_subjects": cfg.n_val_subjects}
    try:
        if cfg.kind == "kfold":
            return sp.kfold_split(entries, cfg.n_folds, seed=cfg.seed, **extra)[cfg.fold]
        return sp.ratio_split(entries, test_fraction=cfg.test_fraction, seed=cfg.seed, **extra)
    except sp.SplitError as exc:
        raise ConfigError(data.dataset, [f"data.split: {exc}"]) from None


# ------------------------------------------------------------------------------------------------
# window starts
# ------------------------------------------------------------------------------------------------
def training_starts(n_epochs: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Non-overlapping window starts on a grid shifted by a random offset in ``[0, L)``.

    Every window lies inside the recording; a recording shorter than ``L`` gives one window at 0
    (padded by :func:`cut_windows`).
    """
    if n_epochs <= length:
        return np.zeros(1 if n_epochs else 0, dtype=np.int64)
    offset = int(rng.integers(0, min(length, n_epochs - length + 1)))
    return np.arange(offset, n_epochs - length + 1, length, dtype=np.int64)


def evaluation_starts(n_epochs: int, length: int, stride: int | None = None) -> np.ndarray:
    """Window starts ``0, stride, ...`` plus one window ending at the last epoch (all epochs covered)."""
    # Evaluation and scoring must cut a night the same way: one implementation, in the models.
    return window_starts(n_epochs, length, stride)


def pass_rng(seed: int, recording_index: int, pass_index: int) -> np.random.Generator:
    """Generator of one recording's window offsets in one training pass."""
    return np.random.default_rng([int(seed), int(recording_index), int(pass_index)])


# ------------------------------------------------------------------------------------------------
# cutting
# ------------------------------------------------------------------------------------------------
def recording_present(arrays: Mapping[str, Any], modalities: Sequence[str]) -> np.ndarray:
    """The ``(n, M)`` availability of one recording; a modality it does not hold is absent throughout."""
    n = int(arrays["n_epochs"])
    present = np.zeros((n, len(modalities)), dtype=bool)
    for col, m in enumerate(modalities):
        if arrays.get(m) is not None:
            present[:, col] = np.asarray(arrays.get(schema.available_column(m), np.ones(n, bool)), dtype=bool)
    return present


def cut_windows(arrays: Mapping[str, Any], modalities: Sequence[str], starts: np.ndarray, length: int, *,
                recording_index: int, pass_index: int = 0, drop_keys: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Cut windows from one recording.

    Parameters
    ----------
    arrays : mapping
        One recording as :func:`somnray.data.schema.row_to_arrays` returns it. A modality it does
        not hold (no column, or null) is absent in every epoch.
    modalities : sequence of str
        Column order of ``present`` (the model's modalities, or the subset read).
    starts : ndarray
        Window start epochs.
    length : int
        Epochs per window (L).
    recording_index, pass_index : int
        Carried into every window.
    drop_keys : ndarray, optional
        The recording's ``(n, M)`` missing-modality drop keys; default none dropped ever.

    Returns
    -------
    dict of str to ndarray
        ``<modality>``: ``(W, L, 3000)`` float16 (zeros where absent); ``present``: ``(W, L, M)``
        bool; ``drop_key``: ``(W, L, M)`` float32 (``inf`` on padding); ``labels``: ``(W, L)`` int64 (-1 for padding); ``recording_index``, ``start``,
        ``pass_index``: ``(W,)`` int64.
    """
    n = int(arrays["n_epochs"])
    starts = np.asarray(starts, dtype=np.int64)
    count = len(starts)
    # Index matrix (W, L) into the recording; positions past the end are padding.
    idx = starts[:, None] + np.arange(length)[None, :]
    inside = idx < n
    safe = np.where(inside, idx, 0)
    labels = np.asarray(arrays["labels"], dtype=np.int64)
    # An epoch is "scored" by the first window (in start order) that covers it.
    order = np.argsort(starts, kind="stable")
    ends = np.maximum.accumulate(starts[order] + length) if count else np.zeros(0, np.int64)
    covered_until = np.empty(count, dtype=np.int64)
    covered_until[order] = np.concatenate([[0], ends[:-1]]) if count else ends
    out: dict[str, np.ndarray] = {
        "labels": np.where(inside, labels[safe] if n else IGNORE_INDEX, IGNORE_INDEX),
        "scored": inside & (idx >= covered_until[:, None]),
        "recording_index": np.full(count, recording_index, dtype=np.int64),
        "start": starts,
        "pass_index": np.full(count, pass_index, dtype=np.int64),
    }
    for m in modalities:
        sig = arrays.get(m)
        if sig is None or not n:
            out[m] = np.zeros((count, length, EPOCH_SAMPLES), dtype=np.float16)
            continue
        sig = np.asarray(sig, dtype=np.float16).reshape(n, EPOCH_SAMPLES)
        out[m] = np.where(inside[..., None], sig[safe], np.float16(0))
    out["present"] = recording_present(arrays, modalities)[safe] & inside[..., None]
    keys = np.full((n, len(modalities)), NEVER, np.float32) if drop_keys is None else drop_keys
    out["drop_key"] = np.where(inside[..., None], keys[safe], NEVER).astype(np.float32)
    return out


def concat_windows(parts: Sequence[Mapping[str, np.ndarray]], modalities: Sequence[str],
                   length: int) -> dict[str, np.ndarray]:
    """Concatenate window dicts (an empty list gives empty arrays of the right shapes)."""
    if parts:
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    empty = {m: np.zeros((0, length, EPOCH_SAMPLES), np.float16) for m in modalities}
    empty.update(present=np.zeros((0, length, len(modalities)), bool),
                 drop_key=np.zeros((0, length, len(modalities)), np.float32),
                 labels=np.zeros((0, length), np.int64), scored=np.zeros((0, length), bool),
                 recording_index=np.zeros(0, np.int64), start=np.zeros(0, np.int64),
                 pass_index=np.zeros(0, np.int64))
    return empty


# ------------------------------------------------------------------------------------------------
# Ray Data
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowSpec:
    """How windows are cut; plain data, shipped to Ray tasks.

    Parameters
    ----------
    dataset_uri : str
        The prepared dataset.
    modalities : tuple of str
        Modalities read, in ``present`` column order.
    length : int
        Epochs per window.
    mode : {"train", "eval"}
        Random-offset grid or every window.
    stride : int, optional
        Evaluation stride (default ``length``).
    seed : int
        Seed of the training offsets.
    missing : MissingConfig, optional
        The phase's missing-modality section: each recording's drop keys are drawn from it
        before its windows are cut; default none.
    keep_only : dict of str to str
        Recordings that keep one modality only (the others are read as not recorded), from
        :func:`somnray.train.missing.incomplete_training_plan`.
    storage_options : dict
        Filesystem options resolved on the driver (credentials, endpoint).
    """

    dataset_uri: str
    modalities: tuple[str, ...]
    length: int
    mode: Literal["train", "eval"] = "eval"
    stride: int | None = None
    seed: int = 0
    missing: MissingConfig | None = None
    keep_only: dict[str, str] = field(default_factory=dict)
    storage_options: dict[str, Any] = field(default_factory=dict)


def read_windows(items: Mapping[str, np.ndarray], spec: WindowSpec) -> dict[str, np.ndarray]:
    """``map_batches`` function: ``(recording_id, recording_index, pass_index)`` items → windows."""
    parts = []
    columns = ["labels", *spec.modalities, *(schema.available_column(m) for m in spec.modalities)]
    simulator = MissingSimulator(spec.missing, spec.modalities) if spec.missing is not None else None
    for rid, index, pass_index in zip(items["recording_id"], items["recording_index"], items["pass_index"]):
        arrays = _read_recording(spec, str(rid), columns)
        if str(rid) in spec.keep_only:  # a unimodal training recording: the others were never recorded
            arrays = {**arrays, **{m: None for m in spec.modalities if m != spec.keep_only[str(rid)]}}
        n = int(arrays["n_epochs"])
        if spec.mode == "train":
            starts = training_starts(n, spec.length, pass_rng(spec.seed, int(index), int(pass_index)))
        else:
            starts = evaluation_starts(n, spec.length, spec.stride)
        # The mask is the recording's, drawn before cutting: every window and pass shares it.
        keys = simulator.recording_keys(recording_present(arrays, spec.modalities), str(rid)) if simulator else None
        parts.append(cut_windows(arrays, spec.modalities, starts, spec.length, recording_index=int(index),
                                 pass_index=int(pass_index), drop_keys=keys))
    return concat_windows(parts, spec.modalities, spec.length)


def _read_recording(spec: WindowSpec, recording_id: str, columns: Sequence[str]) -> dict[str, Any]:
    # The driver opened (checked) the dataset; a task only reads its recording. A modality the
    # dataset lacks entirely has no column and is read as absent.
    return PreparedDataset.at(spec.dataset_uri, spec.storage_options).read(recording_id, columns)


def window_dataset(spec: WindowSpec, recording_ids: Sequence[str], *, passes: int = 1,
                   shuffle_seed: int | None = None):
    """A ``ray.data.Dataset`` of windows of ``recording_ids``.

    Parameters
    ----------
    spec : WindowSpec
        How to cut.
    recording_ids : sequence of str
        The recordings of one split part; their sorted order defines ``recording_index``.
    passes : int
        Training passes laid end to end (each with fresh window offsets); 1 for evaluation.
    shuffle_seed : int, optional
        Shuffle the recording order within each pass (training).
    """
    import ray

    ids = sorted(recording_ids)
    if not ids:
        raise ConfigError(spec.dataset_uri, ["the split part selects no recording"])
    items = []
    for p in range(passes):
        order = np.arange(len(ids))
        if shuffle_seed is not None:
            order = np.random.default_rng([shuffle_seed, p]).permutation(len(ids))
        items += [{"recording_id": ids[i], "recording_index": int(i), "pass_index": p} for i in order]
    # One recording per task: a night is ~10-25 MB of windows, and small tasks stream evenly.
    return ray.data.from_items(items, override_num_blocks=min(len(items), 200)).map_batches(
        read_windows, fn_kwargs={"spec": spec}, batch_size=1, batch_format="numpy")


def iter_window_batches(shard, batch_size: int, *, shuffle_buffer: int = 0, seed: int | None = None,
                        prefetch_batches: int = 2, drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Torch batches of windows from a Ray dataset or a worker's dataset shard."""
    return shard.iter_torch_batches(
        batch_size=batch_size, prefetch_batches=prefetch_batches, drop_last=drop_last,
        local_shuffle_buffer_size=shuffle_buffer or None,
        local_shuffle_seed=seed if shuffle_buffer else None)


# ------------------------------------------------------------------------------------------------
# batches for the model
# ------------------------------------------------------------------------------------------------
def to_sleep_batch(batch: Mapping[str, Any], modalities: Sequence[str], *,
                   simulator: MissingSimulator | None = None, rate: float = 0.0,
                   rng: np.random.Generator | None = None, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> SleepBatch:
    """A window batch (numpy or torch) as the models' :class:`~somnray.models.SleepBatch`.

    The missing-modality ``simulator`` (training, masked validation) turns the windows' drop keys
    into their masks at ``rate``.
    Modalities absent from every window of the batch are left out of ``signals`` (the model
    then treats them as absent), which saves their front-end computation.
    """
    def as_numpy(x: Any) -> np.ndarray:
        return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    present = as_numpy(batch["present"]).astype(bool)
    signals = {m: batch[m] for m in modalities}
    if simulator is not None:
        if rng is None:
            raise ValueError("a missing-modality simulator needs an rng")
        np_signals = {m: as_numpy(v) for m, v in signals.items()} if simulator.cfg.kind == "noisy" else {}
        present, changed = simulator(present, as_numpy(batch["drop_key"]), np_signals, rate, rng)
        signals.update(changed)
    tensors = {}
    for col, m in enumerate(modalities):
        if not present[..., col].any():
            continue
        x = signals[m]
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        tensors[m] = x.to(device=device, dtype=dtype)
    labels = batch["labels"]
    labels = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    return SleepBatch(tensors, torch.from_numpy(present).to(device), labels.to(device=device, dtype=torch.long),
                      tuple(modalities))


def average_window_probabilities(probabilities: np.ndarray, recording_index: np.ndarray, start: np.ndarray,
                                 n_epochs: Mapping[int, int]) -> dict[int, np.ndarray]:
    """Average overlapping windows' per-epoch class probabilities into one row per epoch.

    Parameters
    ----------
    probabilities : ndarray
        ``(W, L, C)`` window probabilities.
    recording_index, start : ndarray
        ``(W,)`` each window's recording and start epoch.
    n_epochs : mapping of int to int
        Epochs per recording index.

    Returns
    -------
    dict of int to ndarray
        ``recording_index → (n_epochs, C)``; epochs no window covered are NaN.
    """
    _, length, n_cls = probabilities.shape
    sums = {r: np.zeros((n, n_cls)) for r, n in n_epochs.items()}
    counts = {r: np.zeros(n) for r, n in n_epochs.items()}
    for probs, rec, s in zip(probabilities, recording_index, start):
        rec, s = int(rec), int(s)
        stop = min(s + length, n_epochs[rec])
        sums[rec][s:stop] += probs[: stop - s]
        counts[rec][s:stop] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return {r: sums[r] / counts[r][:, None] for r in sums}


# ------------------------------------------------------------------------------------------------
# normalisation statistics (training split only)
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainingStatistics:
    """What the model fitted on the training split, as plain arrays the driver ships to the workers.

    Attributes
    ----------
    class_counts : ndarray
        ``(5,)`` labelled epochs per stage in the training recordings.
    fitted : dict
        ``buffer name → value``: what the model's
        :meth:`~somnray.models.SleepStagingModel.fit_training_statistics` set (spectrogram
        statistics, class weights, ...); empty when it fits nothing.
    """

    class_counts: np.ndarray
    fitted: dict[str, np.ndarray] = field(default_factory=dict)


def sample_training_epochs(dataset_uri: str, train_ids: Sequence[str], modalities: Sequence[str], *,
                           with_epochs: bool = True, max_epochs: int = 4096, seed: int = 0,
                           storage_options: Mapping[str, Any] | None = None
                           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class counts of the training recordings and a uniform sample of their present epochs.

    Parameters
    ----------
    with_epochs : bool
        Whether to read signals at all (False: only the class counts, from the labels).
    max_epochs : int
        Epochs per modality, drawn uniformly with ``seed`` across the recordings.

    Returns
    -------
    tuple
        ``(5,)`` labelled epochs per stage, and ``modality → (n_m, 3000)`` float32 epochs (a
        modality without any present epoch is left out).
    """
    from somnray.data.splits import Split

    ids = tuple(sorted(train_ids))
    split = Split("statistics", "manifest", None, ids, (), (), (), (), ())
    columns = ["labels"] + ([c for m in modalities for c in (m, schema.available_column(m))] if with_epochs else [])
    counts = np.zeros(N_CLASSES, dtype=np.int64)
    pools: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    rng = np.random.default_rng(seed)
    per_recording = max(1, max_epochs // max(len(ids), 1))
    # Columns of a modality the dataset lacks are left out by the reader: that modality is absent.
    for rec in PreparedDataset.open(dataset_uri, storage_options).iter(split, "train", columns=columns):
        labels = rec["labels"]
        counts += np.bincount(labels[labels >= 0].astype(np.int64), minlength=N_CLASSES)[:N_CLASSES]
        if not with_epochs:
            continue
        for m in modalities:
            sig = rec.get(m)
            if sig is None:
                continue
            usable = np.flatnonzero(rec.get(schema.available_column(m), np.ones(len(sig), bool)))
            if len(usable):
                take = rng.choice(usable, size=min(per_recording, len(usable)), replace=False)
                pools[m].append(np.asarray(sig[np.sort(take)], dtype=np.float32))
    return counts, {m: np.concatenate(p) for m, p in pools.items() if p}


def compute_training_statistics(model: SleepStagingModel, dataset_uri: str, train_ids: Sequence[str],
                                modalities: Sequence[str], *, max_epochs: int = 4096, seed: int = 0,
                                storage_options: Mapping[str, Any] | None = None) -> TrainingStatistics:
    """Class counts of the training recordings, and what ``model`` fits on them (installed in it).

    Class counts use every training epoch. A model that declares ``needs_epoch_sample`` also gets
    up to ``max_epochs`` present epochs per modality (:func:`sample_training_epochs`).
    """
    counts, sample = sample_training_epochs(dataset_uri, train_ids, modalities,
                                            with_epochs=model.needs_epoch_sample, max_epochs=max_epochs,
                                            seed=seed, storage_options=storage_options)
    epochs = {m: torch.from_numpy(x) for m, x in sample.items()}
    fitted = model.fit_training_statistics(torch.from_numpy(counts), epochs)
    return TrainingStatistics(counts, {name: value.detach().cpu().numpy() for name, value in fitted.items()})


def apply_training_statistics(model: SleepStagingModel, stats: TrainingStatistics) -> list[str]:
    """Install the fitted statistics in a worker's copy of the model; return the buffer names set."""
    return model.load_training_statistics(stats.fitted)
