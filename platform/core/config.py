"""The config kit: reading YAML, turning pydantic errors into lines a user can act on, suggestions.

Every typed config of somnray (cohort profiles, experiment configs, search spaces, the service
config) is validated with pydantic and reports *every* problem at once as ``field.path: message``
lines inside one :class:`~somnray.core.errors.ConfigError`.  The helpers here make those lines read
the same everywhere.  ``yaml`` and ``pydantic`` are imported where used, so that the pure-PyTorch
model registry can use :func:`did_you_mean` without them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import ValidationError


def did_you_mean(value: str, known: Iterable[str], *, n: int = 3, cutoff: float = 0.4) -> str:
    """``"; did you mean 'a', 'b'?"`` for the names of ``known`` closest to ``value``, else ``""``."""
    close = difflib.get_close_matches(value, list(known), n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes a :class:`ConfigError` naming ``source``.

    The message gives the parser's problem and its line and column, never the parser's snippet
    of the text: a file named by mistake (or by a client of the service) may hold secrets.
    """
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(source, [f"not valid YAML{where}: {problem}"]) from None


def read_yaml_file(path: str | os.PathLike[str], kind: str) -> tuple[str, Any]:
    """Read a local YAML file for a config loader: ``(source name, parsed document)``.

    Parameters
    ----------
    path : str or path-like
        The file (``~`` is expanded).
    kind : str
        What the file should be, for messages (``"config"``, ``"search space"``).

    Raises
    ------
    ConfigError
        The file is missing, empty or not YAML.
    """
    source = os.fspath(path)
    file = Path(source).expanduser()
    if not file.is_file():
        raise ConfigError(source, [f"no such {kind} file"])
    raw = parse_yaml(file.read_text(encoding="utf-8"), source)
    if raw is None:
        raise ConfigError(source, ["the file is empty"])
    return source, raw


def location_text(loc: Sequence[Any]) -> str:
    """``("phases", 0, "optim", "lr")`` → ``"phases[0].optim.lr"``; the empty location → ``"(top level)"``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def validation_errors(exc: "ValidationError", *, prefix: tuple[Any, ...] = (),
                      unknown_key: str = "unknown key (check the spelling)") -> list[tuple[tuple[Any, ...], str]]:
    """Every problem of a pydantic ``ValidationError`` as ``(location, message)`` pairs.

    Parameters
    ----------
    exc : pydantic.ValidationError
        The error to translate.
    prefix : tuple
        Prepended to every location (when a sub-document was validated on its own).
    unknown_key : str
        Message for a key the model does not have; name where the keys are documented.

    Notes
    -----
    pydantic's own texts are kept, minus its ``"Value error, "`` prefix; the offending value is
    appended when the message does not already show it; the union branches pydantic adds to a
    location (``"function-after[...]"``, ``"literal['auto']"``, ``"bool"``) are dropped, since users
    only know their own keys.
    """
    out = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = unknown_key
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p == "bool")))
        got = err.get("input")
        if (err["type"] not in ("missing", "extra_forbidden") and isinstance(got, (str, int, float, bool))
                and repr(got) not in msg):
            msg = f"{msg} (got {got!r})"
        out.append((prefix + loc, msg))
    return out


def validation_lines(exc: "ValidationError", **kwargs: Any) -> list[str]:
    """:func:`validation_errors` as ``"location: message"`` lines (for :class:`ConfigError`)."""
    return [f"{location_text(loc)}: {msg}" for loc, msg in validation_errors(exc, **kwargs)]
