"""Errors raised for bad input.  Every message names the file and says what was wrong."""

from __future__ import annotations


class SomnrayDataError(Exception):
    """Base class of the data errors somnray raises on purpose."""


class RecordingError(SomnrayDataError):
    """One recording cannot be prepared; the cohort run records it as rejected and goes on.

    Parameters
    ----------
    source : str
        The file (URI or path, as the user gave it) the problem was found in.
    reason : str
        What was wrong, with the offending value and, where useful, what to do.
    recording_id : str, optional
        The manifest id of the recording, when known.
    """

    def __init__(self, source: str, reason: str, recording_id: str | None = None):
        self.source = str(source)
        self.reason = reason
        self.recording_id = recording_id
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self):  # keep the fields across Ray's pickling of task errors
        return (type(self), (self.source, self.reason, self.recording_id))


class ConfigError(SomnrayDataError):
    """A profile, manifest or config is malformed; ``errors`` lists every problem found at once.

    Parameters
    ----------
    source : str
        The file or object that was being validated.
    errors : list of str
        One human-readable line per problem (``"field.path: what is wrong"``).
    """

    def __init__(self, source: str, errors: list[str]):
        self.source = str(source)
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{self.source}: {len(self.errors)} problem(s):\n{lines}")

    def __reduce__(self):
        return (type(self), (self.source, self.errors))
