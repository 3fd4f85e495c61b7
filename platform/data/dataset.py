"""The prepared dataset: the one place that knows its folder layout and file formats.

Layout (see ``docs/data-contract.md``)::

    <out_uri>/<profile>-<version>/
        entries.csv                       the manifest entries (with subjects), written first
        recordings/<recording_id>.parquet one row per recording (:mod:`somnray.data.schema`), its
                                          summary in the footer
        rejects/<recording_id>.json       why a recording was rejected (written as it happens)
        manifest.json                     counts, class histogram, availability, rejects (written
                                          last: a folder without it is an unfinished preparation)
        splits/<name>.json                optional, from ``somnray split``

:class:`PreparedDataset` reads and writes all of it; nothing else spells a path inside the folder.
The preparation pipeline (:mod:`somnray.data.pipeline`) writes through it, and training, evaluation,
splitting and the benchmarks read through it.  Every file is written atomically
(:meth:`~somnray.core.storage.StorageLocation.atomic_write_bytes`), so a crash never leaves a
partial recording that a rerun would mistake for done.

``version`` is a short SHA-256 of (the sorted manifest entries, the profile, the data format
version): the same inputs and configuration always land in the same folder, any change lands in a
new one.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow.parquet as pq

from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation, resolve

from . import schema
from .manifest import SPLITS, ManifestEntry, format_manifest_csv, parse_manifest_csv
from .prepared import PreparedRecording
from .splits import Split, load_splits, splits_to_json

#: Part of the dataset version hash: bump when preprocessing changes what is written for the same
#: inputs and profile (the Parquet layout has its own ``schema.FORMAT_VERSION``).
DATA_FORMAT_VERSION = f"somnray-data-{schema.FORMAT_VERSION}.1"
#: Key of the per-recording summary in each Parquet file's key/value metadata.
SUMMARY_KEY = "somnray.summary"

MANIFEST_FILE = "manifest.json"
ENTRIES_FILE = "entries.csv"
_RECORDINGS = "recordings"
_REJECTS = "rejects"
_SPLITS = "splits"
_PARQUET = ".parquet"
_JSON = ".json"
#: Columns read with any column subset, so every row names its recording.
_ALWAYS_READ = ("recording_id", "subject_id", "cohort", "n_epochs")


def dataset_version(entries: Sequence[ManifestEntry], profile) -> str:
    """Short (12 hex) SHA-256 of the sorted entries, the resolved profile and the format version."""
    doc = {
        "entries": sorted((e.as_dict() for e in entries), key=lambda d: d["recording_id"]),
        "profile": profile.model_dump(mode="json"),
        "format": DATA_FORMAT_VERSION,
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def recording_summary(rec: PreparedRecording) -> dict[str, Any]:
    """What a recording's file footer says about it: label counts, availability, non-identifying info.

    The same document travels from the pipeline's tasks to ``manifest.json``, so a resumed run
    accounts for an already-written recording by reading only its footer.
    """
    counts = Counter(int(x) for x in rec.labels.tolist())
    mods = {}
    for m, sig in rec.signals.items():
        avail = rec.available.get(m)
        mods[m] = {"present": sig is not None,
                   "available_epochs": int(avail.sum()) if (sig is not None and avail is not None) else 0}
    return {"recording_id": rec.recording_id, "subject_id": rec.subject_id,
            "n_epochs": rec.n_epochs, "label_counts": {str(k): v for k, v in sorted(counts.items())},
            "modalities": mods, "info": rec.info}


class PreparedDataset:
    """A prepared dataset folder: its manifest, entries, splits and recordings.

    Build one with :meth:`open` (an existing, finished dataset: checked), :meth:`at` (no I/O: a Ray
    task reading one recording the driver already opened the dataset for, or a writer) or
    :meth:`create` (the folder of a new preparation).  The object holds a URI and storage options
    only, so it pickles cheaply into Ray tasks.

    Parameters
    ----------
    location : StorageLocation
        The dataset folder.
    version : str, optional
        The version hash when it is known before ``manifest.json`` exists (a new preparation).
    """

    def __init__(self, location: StorageLocation, version: str | None = None):
        self._location = location
        self._version = version
        self._manifest: dict[str, Any] | None = None

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def at(cls, uri: str | StorageLocation,
           storage_options: Mapping[str, Any] | None = None) -> "PreparedDataset":
        """The dataset at ``uri`` without touching storage (nothing is checked until it is read)."""
        return cls(resolve(uri, storage_options))

    @classmethod
    def open(cls, uri: str | StorageLocation,
             storage_options: Mapping[str, Any] | None = None) -> "PreparedDataset":
        """An existing prepared dataset, its ``manifest.json`` read.

        Raises
        ------
        ConfigError
            Naming the URI when it holds no ``manifest.json`` (not a prepared dataset, or one whose
            preparation has not finished) or an unreadable one.
        """
        ds = cls.at(uri, storage_options)
        ds._manifest = ds._read_manifest()
        return ds

    @classmethod
    def create(cls, out_uri: str, profile, entries: Sequence[ManifestEntry],
               storage_options: Mapping[str, Any] | None = None, *,
               recorded: Sequence[ManifestEntry] | None = None) -> "PreparedDataset":
        """The folder ``<out_uri>/<profile>-<version>`` of a preparation, with its ``entries.csv``.

        The version hashes ``entries``; ``entries.csv`` holds ``recorded`` (default: ``entries``),
        the same entries with their files named as records name them
        (:func:`~somnray.data.discovery.recorded_entry`).  A rerun of the same preparation lands
        in the same folder; its ``entries.csv`` (same entries, by the version hash) is left as it is.
        """
        version = dataset_version(entries, profile)
        ds = cls(resolve(out_uri, storage_options).join(f"{profile.name}-{version}"), version)
        ds._location.makedirs()
        if not ds._location.join(ENTRIES_FILE).exists():
            ds.write_entries(entries if recorded is None else recorded)
        return ds

    def __repr__(self) -> str:
        return f"PreparedDataset({self.uri!r})"

    # -- identity -----------------------------------------------------------------------------
    @property
    def location(self) -> StorageLocation:
        """The dataset folder."""
        return self._location

    @property
    def uri(self) -> str:
        """URI of the dataset folder."""
        return self._location.uri

    @property
    def storage_options(self) -> dict[str, Any]:
        """Filesystem options of the dataset (may hold credentials: never log them)."""
        return dict(self._location.storage_options)

    @property
    def manifest(self) -> dict[str, Any]:
        """The ``manifest.json`` document (read on first use when built with :meth:`at`)."""
        if self._manifest is None:
            self._manifest = self._read_manifest()
        return self._manifest

    @property
    def name(self) -> str:
        """``<profile>-<version>`` (the folder name when the manifest does not say)."""
        return str(self.manifest.get("dataset") or self._location.name)

    @property
    def version(self) -> str | None:
        """The version hash (None when the manifest does not record one)."""
        return self._version or self.manifest.get("version")

    def manifest_sha256(self) -> str:
        """Hex SHA-256 of the ``manifest.json`` bytes (what a model card cites as its training data).

        Raises
        ------
        ConfigError
            The dataset has no ``manifest.json``.
        """
        loc = self._location.join(MANIFEST_FILE)
        try:
            return hashlib.sha256(loc.read_bytes()).hexdigest()
        except FileNotFoundError:
            raise ConfigError(loc.uri, ["no manifest.json: not a prepared dataset"]) from None

    @property
    def profile_name(self) -> str | None:
        """Name of the cohort profile the dataset was prepared with (None if not recorded)."""
        profile = self.manifest.get("profile")
        if isinstance(profile, Mapping):
            return profile.get("name")
        return str(profile) if profile else None

    @property
    def modalities(self) -> list[str]:
        """The modality columns, in column order (from the manifest, else from a recording file)."""
        meta = self.manifest.get("schema")
        if isinstance(meta, Mapping) and "modalities" in meta:
            return list(meta["modalities"])
        return schema.modalities_of(self._schema())

    def columns(self) -> list[str]:
        """The column names of the recording files (read from the first one's footer).

        Raises
        ------
        ConfigError
            When no recording is prepared.
        """
        return list(self._schema().names)

    def same_as(self, other: "PreparedDataset") -> bool:
        """Whether ``other`` is this dataset: the same folder, or a copy of its versioned folder
        ``<profile>-<version>`` elsewhere (a local copy of an S3 dataset, say)."""
        here, there = self._location, other._location
        return (here.uri.rstrip("/") == there.uri.rstrip("/")
                or (here.name == there.name and "-" in here.name))

    # -- entries, splits, selection -----------------------------------------------------------
    def recording_ids(self) -> list[str]:
        """Ids of the written recordings, in the order of their file names (hidden temporaries of
        an interrupted write are not recordings)."""
        return [loc.name[: -len(_PARQUET)]
                for loc in self._location.join(_RECORDINGS).find(_PARQUET)]

    def has_recording(self, recording_id: str) -> bool:
        """True when ``recording_id`` is written."""
        return self._recording(recording_id).exists()

    def recording_uri(self, recording_id: str) -> str:
        """URI of the file of ``recording_id`` (for messages)."""
        return self._recording(recording_id).uri

    def entries(self, *, required: bool = False) -> list[ManifestEntry]:
        """The manifest entries whose recording is written (what splits and loaders use).

        Parameters
        ----------
        required : bool
            Raise a :class:`ConfigError` naming the dataset instead of returning an empty list.
        """
        done = set(self.recording_ids())
        if required and not done:
            raise self._no_recordings()
        return [e for e in self._listed_entries() if e.recording_id in done]

    def splits(self) -> list[str]:
        """Names of the split files stored with the dataset (``somnray split --name``), sorted."""
        return [loc.name[: -len(_JSON)] for loc in self._location.join(_SPLITS).find(_JSON)]

    def split_uri(self, name: str) -> str:
        """URI of the split file ``name`` (whether it exists or not)."""
        return self._split(name).uri

    def split(self, name: str) -> list[Split]:
        """The splits (one, or the folds of a k-fold) stored under ``name``.

        Raises
        ------
        FileNotFoundError
            No split file ``name``.
        SplitError
            The file is not a somnray split file.
        """
        return load_splits(self.split_uri(name), self.storage_options)

    def select(self, split: Split | str | None = None, part: str | None = None) -> list[str]:
        """Ids of the written recordings of one split part (all when ``split`` is None).

        Parameters
        ----------
        split : Split or {"train", "val", "test"}, optional
            A :class:`~somnray.data.splits.Split` (with ``part``), or a part of the manifest's fixed
            split column.
        part : {"train", "val", "test"}, optional
            Which part of a Split object.

        Raises
        ------
        ConfigError
            No recording is prepared, an unknown fixed part, or a Split without ``part``.
        """
        ids = self.recording_ids()
        if not ids:
            raise self._no_recordings()
        if split is None:
            return ids
        if isinstance(split, str):
            if split not in SPLITS:
                raise ConfigError(self.uri, [f"split {split!r}: expected one of {list(SPLITS)} (the "
                                             "manifest's fixed split) or a Split object with part="])
            wanted = {e.recording_id for e in self._listed_entries() if e.split == split}
        else:
            if part is None:
                raise ConfigError(self.uri, ["a Split needs part='train', 'val' or 'test'"])
            wanted = set(split.part(part))
        return [rid for rid in ids if rid in wanted]

    # -- reading recordings ---------------------------------------------------------------------
    def read(self, recording_id: str, columns: Sequence[str] | None = None) -> dict[str, Any]:
        """One recording (no Ray needed).

        Parameters
        ----------
        recording_id : str
            Which recording.
        columns : sequence of str, optional
            Read only these columns (``recording_id``, ``subject_id``, ``cohort`` and ``n_epochs``
            are always read).  A column the file lacks (a modality the dataset has not) is left out:
            that modality is absent, not an error.

        Returns
        -------
        dict
            As :func:`somnray.data.schema.row_to_arrays`: ``(n_epochs, 3000)`` signals.

        Raises
        ------
        FileNotFoundError
            The recording is not prepared.
        """
        loc = self._recording(recording_id)
        wanted = None if columns is None else list(dict.fromkeys([*_ALWAYS_READ, *columns]))
        try:
            f = loc.open("rb")
        except FileNotFoundError:
            raise FileNotFoundError(f"{loc.uri}: no prepared recording {recording_id!r} in {self.uri}") from None
        with f:
            parquet = pq.ParquetFile(f)
            names = set(parquet.schema_arrow.names)
            table = parquet.read(columns=None if wanted is None else [c for c in wanted if c in names])
        if table.num_rows != 1:
            raise ConfigError(loc.uri, [f"expected one recording row, found {table.num_rows}"])
        return schema.table_to_arrays(table)[0]

    def summary(self, recording_id: str) -> dict[str, Any]:
        """The summary in a recording file's footer (no signal is read).

        Raises
        ------
        ValueError
            The file has no summary (not written by somnray).
        """
        loc = self._recording(recording_id)
        with loc.open("rb") as f:
            meta = pq.read_metadata(f).metadata or {}
        raw = meta.get(SUMMARY_KEY.encode())
        if raw is None:
            raise ValueError(f"{loc.uri}: no {SUMMARY_KEY} metadata (not written by somnray)")
        return json.loads(raw)

    def iter(self, split: Split | str | None = None, part: str | None = None, *,
             columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """Ray-free reader: each selected recording as :meth:`read` returns it (see :meth:`select`)."""
        for rid in self.select(split, part):
            yield self.read(rid, columns)

    def load(self, split: Split | str | None = None, part: str | None = None, *,
             columns: Sequence[str] | None = None):
        """The selected recordings as a ``ray.data.Dataset`` (one row per recording).

        Parameters
        ----------
        split, part
            As :meth:`select`.
        columns : sequence of str, optional
            Read only these columns (those the dataset lacks are left out, as in :meth:`read`).

        Raises
        ------
        ConfigError
            The selection is empty (and as :meth:`select`).
        """
        import ray

        from somnray.core.session import ensure_ray

        ensure_ray()
        ids = self.select(split, part)
        if not ids:
            raise ConfigError(self.uri, [f"the split selects no prepared recording (part {part!r})"])
        if columns:
            names = set(self.columns())
            columns = [c for c in columns if c in names]
        files = [self._recording(rid) for rid in ids]
        return ray.data.read_parquet([f.path for f in files], filesystem=files[0].pyarrow_filesystem(),
                                     columns=list(columns) if columns else None)

    # -- writing ------------------------------------------------------------------------------
    def write_recording(self, rec: PreparedRecording,
                        modalities: Sequence[str] | None = None) -> dict[str, Any]:
        """Write ``recordings/<id>.parquet`` atomically, its :func:`recording_summary` in the footer.

        Parameters
        ----------
        rec : PreparedRecording
            The recording.
        modalities : sequence of str, optional
            The dataset's modality columns (the profile's); default the recording's own.

        Returns
        -------
        dict
            The summary written.
        """
        summary = recording_summary(rec)
        table = schema.to_table([rec], modalities)
        buf = io.BytesIO()
        with pq.ParquetWriter(buf, table.schema, compression="zstd", use_dictionary=False) as writer:
            writer.write_table(table)
            writer.add_key_value_metadata({SUMMARY_KEY: json.dumps(summary, default=str)})
        self._recording(rec.recording_id).atomic_write_bytes(buf.getvalue())
        return summary

    def write_reject(self, doc: Mapping[str, Any]) -> None:
        """Write ``rejects/<doc["recording_id"]>.json``: why that recording was rejected."""
        self._reject(doc["recording_id"]).write_text(json.dumps(doc, indent=2) + "\n")

    def clear_reject(self, recording_id: str) -> None:
        """Remove the reject file of a recording that has now been prepared (if there is one)."""
        loc = self._reject(recording_id)
        if loc.exists():
            loc.remove()

    def write_entries(self, entries: Sequence[ManifestEntry]) -> None:
        """Write ``entries.csv``."""
        self._location.join(ENTRIES_FILE).write_text(format_manifest_csv(list(entries)))

    def write_manifest(self, doc: Mapping[str, Any]) -> None:
        """Write ``manifest.json`` (last, at the end of every preparation run)."""
        self._location.join(MANIFEST_FILE).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        self._manifest = None  # read back as written on next use

    def write_splits(self, splits: Sequence[Split], name: str | None = None) -> str:
        """Write ``splits/<name>.json`` (default: the first split's name); returns its URI."""
        loc = self._split(name or splits[0].name)
        loc.write_text(splits_to_json(splits))
        return loc.uri

    # -- internals ----------------------------------------------------------------------------
    def _recording(self, recording_id: str) -> StorageLocation:
        return self._location.join(_RECORDINGS, f"{recording_id}{_PARQUET}")

    def _split(self, name: str) -> StorageLocation:
        return self._location.join(_SPLITS, f"{name}{_JSON}")

    def _reject(self, recording_id: str) -> StorageLocation:
        return self._location.join(_REJECTS, f"{recording_id}{_JSON}")

    def _no_recordings(self) -> ConfigError:
        return ConfigError(self.uri, [f"no prepared recordings ({_RECORDINGS}/*{_PARQUET}) found"])

    def _read_manifest(self) -> dict[str, Any]:
        loc = self._location.join(MANIFEST_FILE)
        try:
            text = loc.read_text()
        except FileNotFoundError:
            raise ConfigError(loc.uri, ["no manifest.json: not a prepared dataset, or its preparation "
                                        "has not finished (rerun `somnray prepare` to complete it)"]) from None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigError(loc.uri, [f"not a somnray manifest ({exc})"]) from None

    def _listed_entries(self) -> list[ManifestEntry]:
        loc = self._location.join(ENTRIES_FILE)
        if not loc.exists():
            raise ConfigError(loc.uri, ["no entries.csv: not a prepared dataset"])
        return parse_manifest_csv(loc.read_text(), source=loc.uri)

    def _schema(self):
        ids = self.recording_ids()
        if not ids:
            raise self._no_recordings()
        with self._recording(ids[0]).open("rb") as f:
            return pq.read_schema(f)
