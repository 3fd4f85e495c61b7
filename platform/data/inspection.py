"""What a PSG file or a folder of recordings holds, and a first cohort profile for it.

``somnray inspect`` is the first thing a new user runs on a new cohort: it lists each PSG's
signals (native rate, unit, physical range, duration, and why a signal is unusable), the
annotation texts inside it, the hypnogram files next to it and the labels they use, which
hypnogram pairs with which PSG, and drafts a profile YAML from all of it (modalities guessed from
signal names, rates and units; the label map from the labels seen).  A signal that holds stage
codes (a hypnogram channel) is recognised as the scoring, not as a modality.  The draft loads as it
is and ``somnray prepare`` accepts it; the user checks and edits it.

Nothing identifying is reported: patient and recording header fields are never read into the
report, and file names are shown as the user gave them.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from somnray.core.constants import EPOCH_SECONDS
from somnray.core.errors import ConfigError, RecordingError
from somnray.core.storage import StorageLocation, resolve

from .discovery import files_beside, paired_beside
from .hypnograms import _on_grid, stage_code_runs
from .profiles import normalize_label
from .readers import _ANNOTATION_LABELS, PSG, ChannelData, _annotations, _check_header, _open_edf, read_psg

__all__ = [
    "HypnogramReport",
    "Inspection",
    "PsgReport",
    "SignalReport",
    "draft_profile",
    "format_report",
    "guess_modality",
    "guess_stage",
    "inspect_path",
]

_PSG_SUFFIXES = (".edf", ".bdf", ".rec")
_HYPNOGRAM_SUFFIXES = (".xml", ".csv", ".tsv", ".txt")
#: Name parts that say which side of a pair a file is (removed to find the pairing key).
_ROLE_WORDS = "psg|hypnogram|hypno|hyp|nsrr|stages?|scoring|annotations?|labels?"
#: Pairing rule 1: the file name without its role word and extension.
_STEM_KEY_REGEX = rf"(?i)^(.+?)(?:[-_. ](?:{_ROLE_WORDS}))*\.[a-z0-9]+$"
#: Signal names of a hypnogram stored as a signal (``Hypnogram``, ``Sleep stage``, ``Stages``),
#: compared with :func:`~somnray.data.profiles.normalize_label`'s reduced form.
_STAGE_SIGNAL = re.compile(r"hypno|stage|staging")
#: More distinct values than stage codes have (W, 1-4, REM, movement, unscored): not a hypnogram.
_MAX_STAGE_CODES = 10
#: The shipped per-modality minimum native rates and the bands the draft proposes.
_FLOORS = {"eeg": 50.0, "eog": 25.0, "emg": 50.0}
_BANDS = {"eeg": (0.3, 35.0), "eog": (0.3, 35.0), "emg": (10.0, 45.0)}


# -- the report -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignalReport:
    """One signal of a PSG: what the header and the data say, and the modality it looks like.

    ``stage_codes`` (code text → samples) is set for a signal that holds stage codes, and
    ``code_period`` is then the longest scoring period (30, 20, 15, 10 or 5 s) every change of
    code falls on (None: none of them).
    """

    label: str
    sfreq: float
    unit: str
    physical_range: tuple[float, float] | None
    duration_s: float
    modality: str | None
    unusable: str | None = None
    stage_codes: Counter | None = None
    code_period: float | None = None


@dataclass
class PsgReport:
    """One PSG file: its signals, duration, annotation texts and reading warnings.

    ``uri`` is the file's URI; ``name`` how it is shown (relative to the inspected folder).
    """

    uri: str
    name: str = ""
    duration_s: float = 0.0
    signals: list[SignalReport] = field(default_factory=list)
    annotations: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    hypnogram: str | None = None


@dataclass
class HypnogramReport:
    """One scoring file: its format, the labels it uses (with counts) and its columns.

    An EDF holding only a stage-code signal (format ``edf_signal``) names it in ``signal``, with
    the codes as ``labels`` and the period its codes change on as ``label_period``.
    """

    uri: str
    format: str
    name: str = ""
    labels: Counter = field(default_factory=Counter)
    columns: list[str] = field(default_factory=list)
    header: bool = True
    delimiter: str = ","
    error: str | None = None
    signal: str | None = None
    label_period: float | None = None


@dataclass
class Inspection:
    """Everything found below one path; ``key_regex`` is the pairing rule that paired the files."""

    uri: str
    psgs: list[PsgReport] = field(default_factory=list)
    hypnograms: list[HypnogramReport] = field(default_factory=list)
    key_regex: str = _STEM_KEY_REGEX
    unpaired_hypnograms: list[str] = field(default_factory=list)

    def stage_labels(self) -> Counter:
        """Labels of the hypnograms, else every annotation text of the PSGs when some are stages,
        else the codes of the PSGs' stage-code signal (:meth:`stage_signal`).

        Every text counts, not only stage-like ones: with embedded stages, an annotation the
        profile neither maps nor ignores rejects the recording.
        """
        seen: Counter = Counter()
        for h in self.hypnograms:
            seen.update(h.labels)
        if not seen:
            for p in self.psgs:
                seen.update(p.annotations)
            if not any(guess_stage(t) is not None for t in seen):
                seen.clear()
        signal = self.stage_signal() if not seen else None
        if signal is not None:
            key = normalize_label(signal.label)
            for p in self.psgs:
                for s in p.signals:
                    if s.stage_codes and normalize_label(s.label) == key:
                        seen.update(s.stage_codes)
        return seen

    def stage_signal(self) -> SignalReport | None:
        """The first PSG stage-code signal, when it is where the stages are: no readable scoring
        file is paired and the PSGs' annotations hold no stage."""
        if any(not h.error for h in self.hypnograms) or any(
                guess_stage(t) is not None for p in self.psgs for t in p.annotations):
            return None
        return next((s for p in self.psgs for s in p.signals if s.stage_codes), None)


# -- guesses --------------------------------------------------------------------------------------
_MODALITY_PATTERNS = (
    ("eog", re.compile(r"eog|^e[12]|^loc|^roc|eye")),
    ("emg", re.compile(r"emg|chin|submental|ment")),
    ("eeg", re.compile(r"^eeg|^(?:c[34z]|f[34pz]|fp[12z]|o[12z]|p[34z]|t[3-6]|f[78])(?:[am]\d|cz|oz|pz)?$|"
                       r"^(?:c[34]|f[34]|o[12]|fpz|pz)(?:a|m)[12]$")),
)
#: EEG derivations in the order a sleep scorer would prefer them (AASM: central first).
_EEG_PREFERENCE = ("c4a1", "c4m1", "eegc4a1", "eegc4m1", "c3a2", "c3m2", "eegc3a2", "eegc3m2",
                   "eeg", "eeg1", "f4m1", "f3m2", "o2m1", "o1m2", "eegfpzcz", "fpzcz")


def guess_modality(label: str, sfreq: float, unit: str) -> str | None:
    """``eeg``, ``eog``, ``emg`` or None from a signal's label, rate and unit.

    A signal below 1 Hz or in a unit that is not a voltage (``%``, ``bpm``...) is never one of
    them, whatever its name.
    """
    volts = unit.strip().lower().replace("µ", "u").replace("μ", "u") in ("uv", "mv", "v", "nv", "")
    if not volts or sfreq < 1:
        return None
    key = normalize_label(label)
    for modality, pattern in _MODALITY_PATTERNS:
        if pattern.search(key):
            return modality
    return None


_STAGE_WORDS = (
    (0, re.compile(r"^(?:sleep ?stage ?|stage ?)?(?:w|wake|awake)$")),
    (1, re.compile(r"^(?:sleep ?stage ?|stage ?)?(?:n1|s1|1)(?: ?sleep)?$")),
    (2, re.compile(r"^(?:sleep ?stage ?|stage ?)?(?:n2|s2|2)(?: ?sleep)?$")),
    (3, re.compile(r"^(?:sleep ?stage ?|stage ?)?(?:n3|s3|3|n4|s4|4)(?: ?sleep)?$")),
    (4, re.compile(r"^(?:sleep ?stage ?|stage ?)?(?:r|rem)(?: ?sleep)?$")),
    (-1, re.compile(r"^(?:sleep ?stage ?)?(?:\?|mt|movement(?: ?time)?|unscored|unknown|artifact|"
                    r"artefact|no ?stage)$")),
)
_EVENT_WORDS = re.compile(r"arous|apn|hypop|desat|limb|leg|plm|light|snor|spo2|sao2|recording|"
                          r"position|body|start|stop|end|impedance|calib|oxim|resp|bruxism")


def guess_stage(text: str, numeric_rk: bool = False) -> int | None:
    """The class a stage label most likely means, or None when it does not look like a stage.

    ``Wake|0`` style NSRR concepts are read by their text.  Bare numbers follow R&K numbering
    (4 = S4 → N3, 5 = REM) when ``numeric_rk``, else AASM's (4 = REM).
    """
    words = text.split("|")[0].strip().lower().replace("_", " ")
    if re.fullmatch(r"-?\d+", words):
        code = int(words)
        table = ({0: 0, 1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: -1, 7: -1, 9: -1} if numeric_rk
                 else {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 4, 6: -1, 7: -1, 9: -1, -1: -1})
        return table.get(code)
    for stage, pattern in _STAGE_WORDS:
        if pattern.fullmatch(words):
            return stage
    return None


def _stage_codes(label: str, ch: ChannelData) -> tuple[Counter, float | None] | None:
    """Samples per code and the scoring period of a signal that holds stage codes, else None.

    A stage-code signal is named like one (``Hypnogram``, ``Sleep stage``...) and holds a few
    whole numbers; its codes read as ``format: edf_signal`` reads them (:func:`stage_code_runs`),
    so the drafted ``label_map`` has the keys ``prepare`` looks up.
    """
    if (ch.unusable or not _STAGE_SIGNAL.search(normalize_label(label))
            or np.unique(ch.data).size > _MAX_STAGE_CODES):
        return None
    runs = stage_code_runs(ch)
    codes: Counter = Counter()
    for text, seconds in zip(runs.labels, runs.durations_s):
        codes[text] += int(round(seconds * ch.sfreq))
    if not codes or not all(re.fullmatch(r"-?\d+", t) for t in codes):
        return None
    period = next((float(p) for p in sorted((p for p in _ROW_PERIODS if p <= 30), reverse=True)
                   if all(_on_grid(float(o), p) for o in runs.onsets_s)), None)
    return codes, period


# -- reading --------------------------------------------------------------------------------------
def _inspect_psg(loc: StorageLocation) -> PsgReport:
    report = PsgReport(uri=loc.uri)
    try:
        psg: PSG = read_psg(loc.read_bytes(), source=loc.uri)
    except RecordingError as exc:
        report.error = exc.reason
        return report
    report.duration_s = psg.duration_s
    report.warnings = list(psg.warnings)
    for label, ch in psg.signals.items():
        codes, period = _stage_codes(label, ch) or (None, None)
        report.signals.append(SignalReport(
            label=label, sfreq=ch.sfreq, unit=ch.unit, physical_range=ch.physical_range,
            duration_s=len(ch.data) / ch.sfreq,
            # A hypnogram channel is the scoring, never a modality to read signals from.
            modality=None if codes else guess_modality(label, ch.sfreq, ch.unit),
            unusable=ch.unusable, stage_codes=codes, code_period=period))
    report.annotations = Counter(a.text for a in psg.annotations)
    return report


def _inspect_edf_hypnogram(loc: StorageLocation) -> HypnogramReport | None:
    """An annotation-only EDF+ file (Sleep-EDF's ``*-Hypnogram.edf``) or an EDF holding only a
    stage-code signal, else None."""
    raw = loc.read_bytes()
    try:
        # The header alone tells a PSG (any signal) from a scoring file; only the latter is parsed.
        signals = [lbl for lbl in _check_header(raw, loc.uri).labels if lbl not in _ANNOTATION_LABELS]
        if signals:
            return _inspect_signal_hypnogram(raw, loc, signals)
        rec, _ = _open_edf(raw, loc.uri)
    except RecordingError:
        return None
    report = HypnogramReport(uri=loc.uri, format="edf_annotations")
    try:
        report.labels = Counter(a.text for a in _annotations(rec, loc.uri))
    except RecordingError as exc:
        report.error = exc.reason
    return report


def _inspect_signal_hypnogram(raw: bytes, loc: StorageLocation, signals: list[str]
                              ) -> HypnogramReport | None:
    """An EDF whose one signal holds stage codes (``format: edf_signal`` in its own file), else None."""
    if len(signals) != 1 or not _STAGE_SIGNAL.search(normalize_label(signals[0])):
        return None
    psg = read_psg(raw, source=loc.uri)
    label, ch = next(iter(psg.signals.items()))
    found = _stage_codes(label, ch)
    if found is None:
        return None
    return HypnogramReport(uri=loc.uri, format="edf_signal", labels=found[0], signal=label,
                           label_period=found[1])


def _inspect_xml(loc: StorageLocation) -> HypnogramReport:
    from defusedxml import ElementTree  # XML from users: no entity expansion or external DTDs

    report = HypnogramReport(uri=loc.uri, format="nsrr_xml")
    try:
        root = ElementTree.fromstring(loc.read_bytes())
    except Exception as exc:  # noqa: BLE001 - any parse failure is reported, not raised
        report.error = f"not readable XML ({exc.__class__.__name__}: {exc})"
        return report
    for event in root.iter("ScoredEvent"):
        kind = (event.findtext("EventType") or "").strip()
        if "stage" in kind.lower():
            report.labels[(event.findtext("EventConcept") or "").strip()] += 1
    return report


def _inspect_table(loc: StorageLocation) -> HypnogramReport:
    name = loc.name.lower()
    try:
        text = loc.read_text()
    except UnicodeDecodeError:
        return HypnogramReport(uri=loc.uri, format="csv", error="not UTF-8 text")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return HypnogramReport(uri=loc.uri, format="csv", error="empty file")
    delimiter = "\t" if (name.endswith(".tsv") or "\t" in lines[0]) else ","
    if delimiter == "," and "," not in lines[0] and ";" in lines[0]:
        delimiter = ";"
    rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter))
    first = [c.strip() for c in rows[0]]
    header = not all(guess_stage(c) is not None or _is_number(c) for c in first)
    columns = first if header else [f"column {i + 1}" for i in range(len(first))]
    body = rows[1:] if header else rows
    stage_at = _stage_column(columns, body)
    report = HypnogramReport(uri=loc.uri, format="tsv" if delimiter == "\t" else "csv",
                             columns=columns, header=header, delimiter=delimiter)
    report.labels = Counter(r[stage_at].strip() for r in body if len(r) > stage_at)
    return report


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _stage_column(columns: list[str], body: list[list[str]]) -> int:
    """The column named like a stage, else the last one (onset, duration, stage)."""
    for i, name in enumerate(columns):
        if re.search(r"stage|label|sleep|hypno|score", name, re.IGNORECASE):
            return i
    return len(columns) - 1


def _inspect_hypnogram(loc: StorageLocation) -> HypnogramReport | None:
    name = loc.name.lower()
    if name.endswith(".xml"):
        return _inspect_xml(loc)
    if name.endswith((".csv", ".tsv", ".txt")):
        return _inspect_table(loc)
    return _inspect_edf_hypnogram(loc)


# -- pairing --------------------------------------------------------------------------------------
def _keys(names: list[str], regex: str) -> dict[str, str] | None:
    """name → pairing key under ``regex``, or None when a name does not match or keys repeat."""
    compiled = re.compile(regex)
    keys = {}
    for name in names:
        m = compiled.match(name)
        if m is None:
            return None
        keys[name] = m.group(1)
    return keys if len(set(keys.values())) == len(keys) else None


#: Pairing rules tried in order: rule 1 is the file name without role words (``-PSG``,
#: ``-nsrr``...) and extension; the others are a fixed-length prefix, longest first (Sleep-EDF's
#: ``SC4001E0-PSG.edf`` / ``SC4001EC-Hypnogram.edf`` share 7 characters).
_PAIRING_RULES = (_STEM_KEY_REGEX, *(rf"^(.{{{n}}})" for n in range(12, 3, -1)))


def _pairing_rule(psgs: list[str], hyps: list[str]) -> str:
    """The first of :data:`_PAIRING_RULES` that pairs every hypnogram with exactly one PSG (or
    the one that pairs the most)."""
    best, best_pairs = _STEM_KEY_REGEX, -1
    for rule in _PAIRING_RULES:
        pk, hk = _keys(psgs, rule), _keys(hyps, rule)
        if pk is None or hk is None:
            continue
        pairs = len(set(pk.values()) & set(hk.values()))
        if pairs > best_pairs:
            best, best_pairs = rule, pairs
        if pairs == len(hyps):
            return rule
    return best


def _any_case_glob(suffix: str) -> str:
    """``*.csv`` as an ``fnmatch`` pattern that also matches ``*.CSV`` on case-sensitive stores."""
    return "*" + "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in suffix)


def _hypnogram_beside(psg: StorageLocation) -> tuple[StorageLocation, HypnogramReport, str] | None:
    """The scoring file beside a lone PSG, its report and the rule that paired them, or None.

    Files pair as ``prepare`` pairs a bare EDF with its hypnogram
    (:func:`~somnray.data.discovery.paired_beside`, the PSG's own folder only), under each of
    :data:`_PAIRING_RULES` in turn; a paired EDF counts only when it is a scoring file.
    """
    beside = files_beside(psg)
    # A file several rules pair is read once: a PSG beside (not a scoring file) can be large.
    seen: dict[str, HypnogramReport | None] = {}
    for rule in _PAIRING_RULES:
        for suffix in (*_HYPNOGRAM_SUFFIXES, *_PSG_SUFFIXES):
            for f in paired_beside(psg, rule, _any_case_glob(suffix), beside):
                if f.uri not in seen:
                    seen[f.uri] = _inspect_hypnogram(f)
                if seen[f.uri] is not None:
                    return f, seen[f.uri], rule
    return None


def inspect_path(uri: str, storage_options: Mapping[str, Any] | None = None,
                 hypnogram: str | None = None) -> Inspection:
    """Inspect one PSG file or every recording below a folder.

    Parameters
    ----------
    uri : str
        An EDF/EDF+/BDF file, or a folder searched recursively for PSGs (``.edf``, ``.bdf``) and
        scoring files (annotation-only EDF+, an EDF holding only a stage-code signal, ``.xml``,
        ``.csv``, ``.tsv``, ``.txt``).  A file's hypnogram is the scoring file beside it that
        pairs with it, as ``somnray prepare`` pairs a bare EDF.
    storage_options : mapping, optional
        Filesystem options.
    hypnogram : str, optional
        The scoring file of a single PSG file (default: the one paired beside it).

    Raises
    ------
    ConfigError
        No such file or folder, a folder without any PSG, or ``hypnogram`` with a folder or
        naming no file.
    """
    loc = resolve(uri, storage_options)
    if not loc.exists():
        raise ConfigError(str(uri), ["no such file or folder"])
    folder = loc.isdir()
    one_psg = not folder and loc.name.lower().endswith(_PSG_SUFFIXES)
    if hypnogram is not None and not one_psg:
        raise ConfigError(str(uri), ["a hypnogram can be named only with a single EDF/BDF input"
                                     + (", not with a folder" if folder else "")])
    if one_psg:
        return _inspect_file(loc, str(uri), storage_options, hypnogram)
    files = loc.find() if folder else [loc]
    # Shown as the user named them: the path given, or relative to the folder given.
    root = loc.uri.rstrip("/") + "/"

    def shown(f: StorageLocation) -> str:
        return f.uri[len(root):] if folder and f.uri.startswith(root) else str(uri)

    result = Inspection(uri=str(uri))
    psg_locs = []
    for f in sorted(files, key=lambda f: f.uri):
        name = f.name.lower()
        hyp = None
        if name.endswith(_HYPNOGRAM_SUFFIXES):
            hyp = _inspect_hypnogram(f)
        elif name.endswith(_PSG_SUFFIXES):
            hyp = _inspect_edf_hypnogram(f) if folder else None
            if hyp is None:
                psg_locs.append(f)
        if hyp is not None:
            hyp.name = shown(f)
            result.hypnograms.append(hyp)
    if not psg_locs:
        raise ConfigError(str(uri), [f"no EDF/BDF recording found among {len(files)} file(s)"])
    for f in psg_locs:
        report = _inspect_psg(f)
        report.name = shown(f)
        result.psgs.append(report)
    psg_files = {f.name: r for f, r in zip(psg_locs, result.psgs)}
    hyp_files = {h.uri.rsplit("/", 1)[-1]: h for h in result.hypnograms}
    result.key_regex = _pairing_rule(list(psg_files), list(hyp_files))
    psg_keys = _keys(list(psg_files), result.key_regex) or {}
    hyp_by_key = {k: n for n, k in (_keys(list(hyp_files), result.key_regex) or {}).items()}
    for file_name, report in psg_files.items():
        hyp_name = hyp_by_key.pop(psg_keys[file_name], None) if file_name in psg_keys else None
        report.hypnogram = hyp_files[hyp_name].name if hyp_name else None
    paired = {r.hypnogram for r in result.psgs}
    result.unpaired_hypnograms = [h.name for h in result.hypnograms if h.name not in paired]
    return result


def _inspect_file(loc: StorageLocation, given: str, storage_options: Mapping[str, Any] | None,
                  hypnogram: str | None) -> Inspection:
    """:func:`inspect_path` of one PSG file (named ``given``) and its named or paired hypnogram."""
    result = Inspection(uri=given)
    report = _inspect_psg(loc)
    report.name = given
    result.psgs.append(report)
    if hypnogram is not None:
        hyp_loc = resolve(hypnogram, storage_options)
        if not hyp_loc.exists():
            raise ConfigError(hypnogram, ["no such file"])
        hyp = _inspect_hypnogram(hyp_loc) or HypnogramReport(
            uri=hyp_loc.uri, format="edf_annotations",
            error="an EDF with signals other than one stage-code signal: not a scoring file")
        hyp.name = hypnogram
    else:
        found = _hypnogram_beside(loc)
        if found is None:
            return result
        hyp_loc, hyp, result.key_regex = found
        # Beside the PSG, so shown the way the PSG was given (the same folder part).
        hyp.name = (given[:len(given) - len(loc.name)] + hyp_loc.name if given.endswith(loc.name)
                    else hyp_loc.uri)
    result.hypnograms.append(hyp)
    report.hypnogram = hyp.name
    return result


# -- the report as text -----------------------------------------------------------------------------
def _range(r: tuple[float, float] | None) -> str:
    return "-" if r is None else f"[{r[0]:g}, {r[1]:g}]"


def _code_grid(period: float | None) -> str:
    """What the changes of a stage-code signal say about its scoring period."""
    if period is None:
        return "codes change off every 5-s grid"
    return f"codes change on a {period:g}-s grid"


def format_report(result: Inspection) -> str:
    """The inspection as the text ``somnray inspect`` prints (one block per file)."""
    out: list[str] = []
    for p in result.psgs:
        out.append(p.name)
        if p.error:
            out.append(f"  unreadable: {p.error}")
            continue
        out.append(f"  duration {p.duration_s:g} s, {len(p.signals)} signal(s)")
        out.append(f"  {'signal':<20} {'rate Hz':>8} {'unit':<6} {'physical range':<22} "
                   f"{'duration s':>10}  modality")
        for s in p.signals:
            note = "stage codes" if s.stage_codes else (s.modality or "-")
            if s.unusable:
                note += f" (unusable: {s.unusable})"
            out.append(f"  {s.label:<20} {s.sfreq:>8g} {s.unit:<6} {_range(s.physical_range):<22} "
                       f"{s.duration_s:>10g}  {note}")
        for s in p.signals:
            if s.stage_codes:
                codes = ", ".join(f"{t!r} ×{n}" for t, n in sorted(s.stage_codes.items()))
                out.append(f"  stage codes in {s.label!r} (samples): {codes}; "
                           f"{_code_grid(s.code_period)}")
        if p.annotations:
            kinds = ", ".join(f"{t!r} ×{n}" for t, n in sorted(p.annotations.items()))
            out.append(f"  annotations: {kinds}")
        for w in p.warnings:
            out.append(f"  warning: {w}")
        staged = next((s.label for s in p.signals if s.stage_codes), None)
        unpaired = "none paired" + (f" (stages in signal {staged!r})" if staged else "")
        out.append(f"  hypnogram: {p.hypnogram or unpaired}")
        hyp = next((h for h in result.hypnograms if h.name == p.hypnogram), None)
        if hyp is not None and len(hyp.columns) == 1 and hyp.labels:
            # One label per row: the row period follows from the recording's length, and a
            # period other than 30 s needs saying before anyone maps rows onto 30-s epochs.
            rows = sum(hyp.labels.values())
            out.append(f"  one label per row: {rows} rows over {p.duration_s:g} s = one label every "
                       f"{p.duration_s / rows:.3g} s")
    for h in result.hypnograms:
        out.append(h.name)
        if h.error:
            out.append(f"  unreadable {h.format}: {h.error}")
            continue
        cols = f", columns {h.columns}" if h.columns else ""
        if h.signal is not None:
            cols = f", signal {h.signal!r} (samples), {_code_grid(h.label_period)}"
        out.append(f"  {h.format}{cols}")
        labels = ", ".join(f"{t!r} ×{n}" for t, n in sorted(h.labels.items()))
        out.append(f"  labels: {labels or 'none'}")
    for name in result.unpaired_hypnograms:
        out.append(f"not paired with any PSG: {name}")
    return "\n".join(out)


# -- the drafted profile ----------------------------------------------------------------------------
def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def _flow(labels: list[str]) -> str:
    return "[" + ", ".join(_q(x) for x in labels) + "]"


_LEFT_RIGHT = (("e1", "e2"), ("loc", "roc"), ("eogl", "eogr"), ("leog", "reog"))


def _channel_plan(signals: list[SignalReport]) -> dict[str, dict[str, Any]]:
    """Per guessed modality: the primary signal (and reference) and fallbacks, best first."""
    by_mod: dict[str, list[SignalReport]] = {}
    for s in signals:
        if s.modality and not s.unusable:
            by_mod.setdefault(s.modality, []).append(s)
    plan: dict[str, dict[str, Any]] = {}
    if "eeg" in by_mod:
        eegs = sorted(by_mod["eeg"], key=lambda s: (
            _EEG_PREFERENCE.index(normalize_label(s.label))
            if normalize_label(s.label) in _EEG_PREFERENCE else len(_EEG_PREFERENCE)))
        plan["eeg"] = {"aliases": [eegs[0].label], "fallbacks": [s.label for s in eegs[1:4]],
                       "sfreq": eegs[0].sfreq}
    if "eog" in by_mod:
        eogs = by_mod["eog"]
        keys = {normalize_label(s.label): s for s in eogs}
        for left, right in _LEFT_RIGHT:
            if left in keys and right in keys:
                plan["eog"] = {"aliases": [keys[left].label], "reference": [keys[right].label],
                               "fallbacks": [], "sfreq": min(keys[left].sfreq, keys[right].sfreq)}
                break
        else:
            plan["eog"] = {"aliases": [eogs[0].label], "fallbacks": [s.label for s in eogs[1:3]],
                           "sfreq": eogs[0].sfreq}
    if "emg" in by_mod:
        emgs = sorted(by_mod["emg"], key=lambda s: -s.sfreq)
        plan["emg"] = {"aliases": [emgs[0].label], "fallbacks": [s.label for s in emgs[1:3]],
                       "sfreq": emgs[0].sfreq}
    return plan


def _label_lines(labels: Counter) -> tuple[list[str], list[str]]:
    """``label_map`` lines (with a comment where a guess needs checking) and ``ignore`` patterns."""
    numeric = [t for t in labels if re.fullmatch(r"-?\d+", t.split("|")[0].strip())]
    # R&K numbering shows itself by a 5 (REM), or by a 4 beside a REM written as a word (R, REM):
    # then 4 can only be stage S4, which AASM merges into N3.
    worded_rem = any(guess_stage(t) == 4 for t in labels if t not in numeric)
    rk = any(t.split("|")[0].strip() == "5" for t in numeric) or (
        worded_rem and any(t.split("|")[0].strip() == "4" for t in numeric))
    lines, ignore = [], []
    for text in sorted(labels):
        stage = guess_stage(text, numeric_rk=rk)
        if stage is None and _EVENT_WORDS.search(text.lower()):
            ignore.append(text)
            continue
        comment = ""
        if stage is None:
            stage, comment = -1, "  # not recognised as a stage: map it, or move it to ignore"
        elif text in numeric and not rk and text.strip() == "4":
            comment = "  # check: 4 is REM in AASM numbering but S4 (N3) in R&K numbering"
        lines.append(f"    {_q(text)}: {stage}{comment}")
    return lines, ignore


_DEFAULT_LABELS = Counter({"W": 1, "N1": 1, "N2": 1, "N3": 1, "R": 1, "?": 1})


def draft_profile(result: Inspection, name: str = "my-cohort") -> str:
    """A cohort profile YAML drafted from an inspection; it loads as-is and is meant to be edited.

    Modalities come from :func:`guess_modality` on the first readable PSG (the best EEG first,
    others as fallbacks; a left/right EOG pair becomes a derivation), bands and minimum rates are
    the shipped ones with ``band_fit: auto``, the annotation format from the paired files (or
    the PSG's own annotations), the label map from the labels seen, and the pairing rule the one
    that paired the files.
    """
    first = next((p for p in result.psgs if not p.error), None)
    plan = _channel_plan(first.signals if first else [])
    hyps = [h for h in result.hypnograms if not h.error]
    labels = result.stage_labels()
    table = next((h for h in hyps if h.format in ("csv", "tsv")), None)
    # Without a scoring file the stages are the PSG's own: its annotations or a stage-code signal.
    stage_signal = result.stage_signal()
    fmt = hyps[0].format if hyps else ("edf_signal" if stage_signal else "embedded")
    out = [
        f"# Drafted by `somnray inspect` from {len(result.psgs)} recording(s): check every guess,",
        "# then run:  somnray prepare --profile THIS.yaml <folder or manifest> --out <store>",
        f"name: {_q(name)}",
        'description: "Drafted by somnray inspect; describe the cohort here."',
        "",
        "channels:",
    ]
    if not plan:
        out += ["  eeg:                      # no EEG-like signal was recognised: name yours",
                f"    aliases: {_flow([first.signals[0].label] if first and first.signals else ['EEG'])}",
                "    required: true", "    min_sfreq: 50", "    band: [0.3, 35.0]",
                "    band_fit: auto"]
    for modality in ("eeg", "eog", "emg"):
        if modality not in plan:
            continue
        p = plan[modality]
        # EMG is optional in every shipped profile: many cohorts lack a usable chin signal.
        required = modality != "emg"
        low, high = _BANDS[modality]
        slow = " (below min_sfreq: it will be absent)" if p["sfreq"] < _FLOORS[modality] else ""
        out.append(f"  {modality}:                     # native rate {p['sfreq']:g} Hz{slow}")
        out.append(f"    aliases: {_flow(p['aliases'])}")
        if p.get("reference"):
            out.append(f"    reference: {_flow(p['reference'])}")
        if p["fallbacks"]:
            out.append("    fallbacks:                # tried in order when the signal above is missing "
                       "or unusable")
            out += [f"      - aliases: {_flow([fb])}" for fb in p["fallbacks"]]
        out.append(f"    required: {'true' if required else 'false'}")
        out.append(f"    min_sfreq: {_FLOORS[modality]:g}")
        out.append(f"    band: [{low:g}, {high:g}]")
        out.append("    band_fit: auto            # clipped below the native Nyquist frequency when "
                   "needed")
    map_lines, ignore = _label_lines(labels or _DEFAULT_LABELS)
    out += ["", "annotations:", f"  format: {fmt}"]
    if fmt == "nsrr_xml":
        out.append('  event_type: "Stages|Stages"')
    if fmt == "edf_signal":
        signal, period = ((hyps[0].signal, hyps[0].label_period) if hyps
                          else (stage_signal.label, stage_signal.code_period))
        out.append(f"  signal: {_q(signal)}          # its values are the stage codes below")
        if period is None:
            out.append("  # label_period: the codes change off every 5-s grid: set the scoring's period")
        elif period != EPOCH_SECONDS:
            out.append(f"  label_period: {period:g}            # every change of code falls on this "
                       "grid: check it")
    out.append("  label_map:                  # 0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 unscored" +
               ("" if labels else " (no labels were seen: these are placeholders)"))
    out += map_lines
    if ignore:
        out.append(f"  ignore: {_flow(ignore)}")
    if table is not None:
        cols = table.columns
        stage_at = _stage_column(cols, [])
        layout = "events" if len(cols) >= 3 else "epochs"
        out.append(f"  table_layout: {layout}             # epochs = one stage per row, label_period apart")
        period = _row_period(result) if layout == "epochs" else None
        if period is not None:
            out.append(f"  label_period: {period:g}            # seconds per row, from the rows and the "
                       "signal's length: check it")
        out.append(f"  header: {'true' if table.header else 'false'}")
        if table.delimiter not in (",", "\t"):
            out.append(f"  delimiter: {_q(table.delimiter)}")
        if table.header:
            out.append(f"  stage_column: {_q(cols[stage_at])}")
            if layout == "events":
                out.append(f"  onset_column: {_q(cols[0])}")
                out.append(f"  duration_column: {_q(cols[1])}")
    psg_ext = sorted({p.uri.rsplit(".", 1)[-1] for p in result.psgs})
    hyp_glob = None
    if hyps:
        hyp_glob = "*." + hyps[0].uri.rsplit(".", 1)[-1]
        if hyp_glob.lower().endswith(".edf"):
            suffix = _common_suffix([h.uri.rsplit("/", 1)[-1] for h in hyps])
            hyp_glob = "*" + suffix
    psg_glob = "*." + psg_ext[0] if len(psg_ext) == 1 else "*"
    if hyp_glob and hyp_glob.lower().endswith(".edf") and psg_glob.lower() == "*.edf":
        psg_glob = "*" + _common_suffix([p.uri.rsplit("/", 1)[-1] for p in result.psgs])
    out += ["", "trimming:", "  rule: edges", "  edge_minutes: 30", "", "normalization: zscore", "",
            "pairing:",
            f"  psg_glob: {_q(psg_glob)}",
            f"  hypnogram_glob: {_q(hyp_glob) if hyp_glob else 'null'}",
            f"  key_regex: {_q(result.key_regex)}",
            f"  subject_regex: {_q(result.key_regex)}   # edit: group 1 should be the subject",
            "  recording_id_regex: null", ""]
    return "\n".join(out)


#: Label periods a one-label-per-row scoring is snapped to (the ones clinics score at).
_ROW_PERIODS = (5, 10, 15, 20, 30, 60)


def _row_period(result: Inspection) -> float | None:
    """The label period one-label-per-row scorings imply (signal length / rows), snapped to a
    common scoring period when within 5 % of one; None when no such scoring is paired."""
    ratios = []
    for p in result.psgs:
        hyp = next((h for h in result.hypnograms if h.name == p.hypnogram), None)
        if p.error or hyp is None or hyp.error or len(hyp.columns) != 1 or not hyp.labels:
            continue
        ratios.append(p.duration_s / sum(hyp.labels.values()))
    if not ratios:
        return None
    ratio = sorted(ratios)[len(ratios) // 2]
    nearest = min(_ROW_PERIODS, key=lambda c: abs(ratio - c) / c)
    return float(nearest) if abs(ratio - nearest) / nearest <= 0.05 else None


def _common_suffix(names: list[str]) -> str:
    """The longest ending all names share, from its first ``-``/``_``/``.`` (``-PSG.edf``)."""
    if not names:
        return ""
    rev = [n[::-1] for n in names]
    n = 0
    while all(len(r) > n and r[n] == rev[0][n] for r in rev):
        n += 1
    suffix = names[0][len(names[0]) - n:]
    cut = min((suffix.find(c) for c in "-_" if c in suffix), default=-1)
    return suffix[cut:] if cut >= 0 else suffix[suffix.find("."):]
