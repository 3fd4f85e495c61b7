"""The errors somnray raises on purpose.

One root, :class:`SomnrayError`, so the command line maps every known failure to a one-line message
and an exit code in one place (:mod:`somnray.jobs.cli`).  Below it the families are siblings:

======================  ===========================================================================
:class:`ConfigError`    a profile, manifest, experiment config, search space or service config is
                        malformed; every problem found is listed at once
:class:`DataError`      input data cannot be used (:class:`RecordingError` for one recording, which
                        a cohort run records as rejected and goes past; :class:`SplitError`)
:class:`SubmitError`    a cluster's Job Submission API refused or could not be reached
:class:`ServingError`   a scoring job cannot go on (the cohort-scoring driver gives up)
======================  ===========================================================================

Every message names the file (or URI) and says what was wrong, with the offending value and, where
useful, what to do.
"""

from __future__ import annotations


class SomnrayError(Exception):
    """Root of every error somnray raises on purpose (a bug is anything else)."""


class ConfigError(SomnrayError):
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

    def __reduce__(self):  # keep the fields across Ray's pickling of task errors
        return (type(self), (self.source, self.errors))


class DataError(SomnrayError):
    """Input data that cannot be used as it is."""


class RecordingError(DataError):
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
        #: The independent problems the reason lists (one, unless made by :meth:`of_problems`).
        self.problems = [reason]
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self):  # keep the fields across Ray's pickling of task errors
        return (type(self), (self.source, self.reason, self.recording_id))

    @classmethod
    def of_problems(cls, source: str, reasons: list[str],
                    recording_id: str | None = None) -> RecordingError:
        """One error listing every independent problem of a recording, so one run shows them all.

        A single problem keeps its reason as it is; several become
        ``N problems: (1) ...; (2) ...``.
        """
        if len(reasons) == 1:
            return cls(source, reasons[0], recording_id)
        listed = "; ".join(f"({i}) {r}" for i, r in enumerate(reasons, start=1))
        error = cls(source, f"{len(reasons)} problems: {listed}", recording_id)
        error.problems = list(reasons)
        return error


class SplitError(DataError, ValueError):
    """A split cannot be made or applied (too few subjects, unknown split or fold)."""


class SubmitError(SomnrayError):
    """A job cannot be submitted to, or followed on, a Ray cluster."""


class ServingError(SomnrayError, RuntimeError):
    """A scoring run cannot go on (for example, the cohort driver lost its actors)."""
