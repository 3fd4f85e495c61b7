"""Finding a cohort's recordings: from a manifest (CSV or Parquet) or by pairing files in a folder.

A folder is searched recursively.  PSG and hypnogram file names are matched against the profile's
``pairing.psg_glob`` / ``pairing.hypnogram_glob`` (``fnmatch``, on the file name), paired by the
group 1 of ``pairing.key_regex``, and named by ``pairing.subject_regex`` and
``pairing.recording_id_regex`` (see :class:`somnray.data.profiles.PairingSpec`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import io
import logging
import re
from collections.abc import Mapping
from typing import Any

from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation, relative_uri, resolve

from .manifest import ManifestEntry, parse_manifest_csv

log = logging.getLogger(__name__)

#: Recording ids become file names on every store: keep them portable.
RECORDING_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def discover(folder_uri: str, profile, storage_options: Mapping[str, Any] | None = None
             ) -> list[ManifestEntry]:
    """Pair the PSG and hypnogram files found below ``folder_uri`` by the profile's rules.

    Parameters
    ----------
    folder_uri : str
        Folder (path or URI) searched recursively.
    profile : CohortProfile
        Its ``pairing`` section gives the globs and regular expressions.
    storage_options : mapping, optional
        Filesystem options.

    Returns
    -------
    list of ManifestEntry
        Sorted by recording id.  A PSG without a hypnogram (when the profile expects separate
        hypnograms) gets ``hypnogram=None`` and a warning; the pipeline rejects it with a reason.

    Raises
    ------
    ConfigError
        The folder holds no PSG file, names do not match the regular expressions, two files claim
        one key or recording id.
    """
    folder = resolve(folder_uri, storage_options)
    pairing = profile.pairing
    files = folder.find()
    if not files:
        raise ConfigError(folder.uri, ["no files found (is the path right, and is it a folder?)"])
    key_re = re.compile(pairing.key_regex)
    subj_re = re.compile(pairing.subject_regex)
    rid_re = re.compile(pairing.recording_id_regex or pairing.key_regex)

    psgs: dict[str, StorageLocation] = {}
    hyps: dict[str, StorageLocation] = {}
    errors: list[str] = []
    for loc in files:
        name = loc.name
        is_hyp = pairing.hypnogram_glob is not None and fnmatch.fnmatch(name, pairing.hypnogram_glob)
        is_psg = fnmatch.fnmatch(name, pairing.psg_glob) and not is_hyp
        if not (is_psg or is_hyp):
            continue
        m = key_re.match(name)
        if m is None:
            errors.append(f"{loc.uri}: file name does not match pairing.key_regex {pairing.key_regex!r}")
            continue
        table = hyps if is_hyp else psgs
        key = m.group(1)
        if key in table:
            errors.append(f"{loc.uri}: pairing key {key!r} is also claimed by {table[key].uri}")
            continue
        table[key] = loc
    if not psgs and not errors:
        raise ConfigError(folder.uri, [f"no PSG file matches pairing.psg_glob {pairing.psg_glob!r} "
                                       f"among {len(files)} file(s)"])

    entries: list[ManifestEntry] = []
    for key, psg in sorted(psgs.items()):
        sm, rm = subj_re.match(psg.name), rid_re.match(psg.name)
        if sm is None:
            errors.append(f"{psg.uri}: file name does not match pairing.subject_regex "
                          f"{pairing.subject_regex!r}")
            continue
        if rm is None:
            errors.append(f"{psg.uri}: file name does not match pairing.recording_id_regex "
                          f"{rid_re.pattern!r}")
            continue
        hyp = hyps.pop(key, None)
        if hyp is None and pairing.hypnogram_glob is not None:
            log.warning("%s: no hypnogram matching %r with pairing key %r; the recording will be "
                        "rejected", psg.uri, pairing.hypnogram_glob, key)
        entries.append(ManifestEntry(recording_id=rm.group(1), subject_id=sm.group(1), psg=psg.uri,
                                     hypnogram=hyp.uri if hyp else None, profile=profile.name))
    for key, hyp in sorted(hyps.items()):
        log.warning("%s: hypnogram without a PSG file (pairing key %r); ignored", hyp.uri, key)
    errors.extend(check_entries(entries))
    if errors:
        raise ConfigError(folder.uri, errors)
    return sorted(entries, key=lambda e: e.recording_id)


def single_recording(psg: StorageLocation, profile, hypnogram: str | None = None
                     ) -> ManifestEntry:
    """The manifest entry of one PSG file given on its own.

    Its ids come from the profile's ``pairing`` regular expressions when the file name matches
    them, else from the file name without its extension.  Its hypnogram is ``hypnogram`` when
    given, else the file beside it that the profile's pairing rules pair with it (none when the
    annotations are embedded or no file pairs).
    """
    pairing = profile.pairing
    name = psg.name
    stem = name.rsplit(".", 1)[0]
    rid_m = re.match(pairing.recording_id_regex or pairing.key_regex, name)
    subj_m = re.match(pairing.subject_regex, name)
    recording_id = rid_m.group(1) if rid_m else stem
    hyp_uri = hypnogram
    if hyp_uri is None and pairing.hypnogram_glob is not None:
        paired = paired_beside(psg, pairing.key_regex, pairing.hypnogram_glob)
        hyp_uri = paired[0].uri if paired else None
    return ManifestEntry(recording_id=recording_id, subject_id=subj_m.group(1) if subj_m else recording_id,
                         psg=psg.uri, hypnogram=hyp_uri, profile=profile.name)


def files_beside(psg: StorageLocation) -> list[StorageLocation]:
    """The other files of a PSG's own folder, sorted by name.

    Only that folder, not below it: a bare file's parent can be any large folder.
    """
    beside = (psg.with_path(path) for path in sorted(psg.fs.ls(psg.parent.path, detail=False)))
    return [f for f in beside if f.name != psg.name]


def paired_beside(psg: StorageLocation, key_regex: str, hypnogram_glob: str,
                  beside: list[StorageLocation] | None = None) -> list[StorageLocation]:
    """The files beside a PSG that pair with it, as a folder's files pair (:func:`discover`).

    Parameters
    ----------
    psg : StorageLocation
        The PSG file.
    key_regex : str
        Pairing rule: group 1 is the key a PSG and its hypnogram share.
    hypnogram_glob : str
        ``fnmatch`` pattern of hypnogram file names.
    beside : list of StorageLocation, optional
        The files of the PSG's folder when already listed (default: :func:`files_beside`).

    Returns
    -------
    list of StorageLocation
        Sorted by name; empty when the PSG's own name does not match ``key_regex``.
    """
    key_m = re.match(key_regex, psg.name)
    if key_m is None:
        return []
    paired = []
    for other in files_beside(psg) if beside is None else beside:
        m = re.match(key_regex, other.name)
        if (other.name != psg.name and fnmatch.fnmatch(other.name, hypnogram_glob)
                and m is not None and m.group(1) == key_m.group(1)):
            paired.append(other)
    return paired


def check_entries(entries: list[ManifestEntry]) -> list[str]:
    """Problems that make entries unusable as outputs: unsafe or repeated recording ids."""
    problems = []
    seen: dict[str, str] = {}
    for e in entries:
        if not RECORDING_ID_RE.match(e.recording_id):
            problems.append(f"recording_id {e.recording_id!r} ({e.psg}) is not a portable file name: "
                            "use letters, digits, '.', '_' and '-' only")
        if e.recording_id in seen:
            problems.append(f"recording_id {e.recording_id!r} of {e.psg} repeats the one of "
                            f"{seen[e.recording_id]}")
        seen.setdefault(e.recording_id, e.psg)
    return problems


def load_manifest(uri: str, profile=None, storage_options: Mapping[str, Any] | None = None,
                  *, hypnogram: str | None = None) -> list[ManifestEntry]:
    """The recordings of a cohort, from a manifest file, a folder or one PSG file.

    Parameters
    ----------
    uri : str
        A manifest ``.csv`` / ``.parquet`` (relative paths inside resolve against its folder), a
        folder of recordings, or one EDF/BDF file (then ``profile`` is required for pairing).
    profile : CohortProfile, optional
        Needed for folders and single files.
    storage_options : mapping, optional
        Filesystem options.
    hypnogram : str, optional
        The scoring file of a single PSG file (default: found by the profile's pairing rules).

    Raises
    ------
    ConfigError
        Missing input, unknown manifest type, malformed manifest (every problem listed).
    """
    loc = resolve(uri, storage_options)
    if not loc.exists():
        raise ConfigError(loc.uri, ["no such file or folder"])
    name = loc.name.lower()
    is_psg = name.endswith((".edf", ".bdf", ".rec")) and not loc.isdir()
    if hypnogram is not None and not is_psg:
        raise ConfigError(loc.uri, ["a hypnogram can be named only with a single EDF/BDF input, "
                                    "not with a manifest or a folder"])
    if loc.isdir():
        if profile is None:
            raise ConfigError(loc.uri, ["is a folder: a cohort profile is needed to pair its files"])
        return discover(loc.uri, profile, storage_options)
    if is_psg:
        if profile is None:
            raise ConfigError(loc.uri, ["is a PSG file: a cohort profile is needed to read it"])
        hyp = resolve(hypnogram, storage_options).uri if hypnogram is not None else None
        entries = [single_recording(loc, profile, hyp)]
        problems = check_entries(entries)
        if problems:
            raise ConfigError(loc.uri, problems)
        return entries
    base = loc.parent.uri if not loc.is_local else loc.parent.path
    if name.endswith(".csv"):
        try:
            text = loc.read_text()
        except UnicodeDecodeError as exc:
            raise ConfigError(loc.uri, [f"not a UTF-8 text CSV ({exc})"]) from None
        entries = parse_manifest_csv(text, source=loc.uri, base=base)
    elif name.endswith((".parquet", ".pq")):
        entries = parse_manifest_csv(_parquet_as_csv(loc), source=loc.uri, base=base)
    else:
        raise ConfigError(loc.uri, ["unknown manifest type: expected a .csv or .parquet file, "
                                    "an EDF/BDF file, or a folder of recordings"])
    problems = check_entries(entries)
    if problems:
        raise ConfigError(loc.uri, problems)
    return entries


def input_folder(uri: str, storage_options: Mapping[str, Any] | None = None) -> StorageLocation:
    """The folder a cohort's files are recorded relative to: the input folder, or the manifest's."""
    loc = resolve(uri, storage_options)
    return loc if loc.isdir() else loc.parent


def recorded_entry(entry: ManifestEntry, folder: str | StorageLocation) -> ManifestEntry:
    """``entry`` as records hold it: PSG and hypnogram relative to ``folder``, never absolute paths
    (:func:`~somnray.core.storage.relative_uri`)."""
    return dataclasses.replace(entry, psg=relative_uri(entry.psg, folder),
                               hypnogram=relative_uri(entry.hypnogram, folder) if entry.hypnogram else None)


def _parquet_as_csv(loc: StorageLocation) -> str:
    # Going through CSV text reuses the one manifest validator (columns, empties, duplicates).
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        with loc.open("rb") as f:
            table = pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(loc.uri, [f"not a readable Parquet file ({exc})"]) from None
    table = table.cast(pa.schema([pa.field(n, pa.string()) for n in table.column_names]))
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(quoting_style="needed"))
    return buf.getvalue().decode("utf-8")
