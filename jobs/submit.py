"""Submit ``somnray`` workflows to a Ray cluster through Ray's Job Submission API.

A submission is built in four steps, all on the submitting machine and all before the cluster is
contacted, so that a malformed config never becomes a failed job:

1. **Validate** the command locally: the arguments are parsed with the same shapes the
   ``somnray`` sub-command takes, experiment configs are loaded and validated with every error at
   once (:func:`somnray.train.config.load_experiment`), cohort profiles are loaded, URIs are parsed.
2. **Package the code** (unless the cluster's image already has the right somnray installed,
   ``use_installed=True``): a wheel is built from the checkout (``pip wheel --no-deps``), cached
   under ``~/.cache/somnray/wheels/<source hash>``, and unpacked; its ``somnray/`` package and its
   ``.dist-info`` go to the job as ``runtime_env["py_modules"]``.
3. **Stage the configs**: the local files the command reads (experiment config, search space, a
   profile given as a path) are copied into a small staging folder shipped as the job's
   ``working_dir``, and the command is rewritten to name them relative to it.
4. **Submit** ``python -m somnray.jobs <command> …`` with that runtime environment.

Why not the repository as ``working_dir``
    Ray puts the ``working_dir`` on ``sys.path`` of the driver and of every worker.  The repository
    root holds ``platform/``, which would then shadow the standard library's ``platform`` module
    that torch, ray and pytest import: everything breaks.  The wheel is where ``pyproject.toml``'s
    folder mapping (``platform/data`` → ``somnray.data`` ...) is applied, so shipping its content
    is shipping exactly what ``pip install`` would give.

Why ``py_modules`` with the unpacked wheel rather than the ``.whl`` itself
    Ray 2.60 accepts a ``.whl`` in ``py_modules`` but installs it on each node with
    ``pip install <wheel> --target=<dir>``, *with* its dependencies: torch, Ray and DeepSpeed would
    be downloaded again into every job's folder.  A ``pip: [<wheel>]`` runtime env needs the
    wheel's path to exist on every node, and inside a virtualenv Ray clones the whole environment
    (gigabytes) for each new wheel.  An unpacked package directory is uploaded once per content
    hash, needs no pip on the nodes, and is first on ``sys.path``, ahead of any older somnray in
    the image.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from somnray.core.errors import ConfigError, SubmitError

log = logging.getLogger(__name__)

#: Sub-commands that can be submitted, in the order ``--help`` lists them.
SUBMITTABLE: tuple[str, ...] = ("prepare", "train", "tune", "score")
#: The Jobs API address used when neither ``--address`` nor the environment names one.
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
#: Folder of the staged ``working_dir`` that holds the uploaded config files.
STAGED_CONFIGS = "configs"
#: Terminal job states (``ray.job_submission.JobStatus`` values).
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
#: Wheel builds kept in the cache (the newest ones).
KEEP_WHEELS = 8

# Files outside the package folders that the build reads.
_BUILD_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README.md", "LICENSE")
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ipynb_checkpoints"}


# ------------------------------------------------------------------------------------------------
# addresses and the client
# ------------------------------------------------------------------------------------------------
def default_address() -> str:
    """The Jobs API address: ``RAY_API_SERVER_ADDRESS``, ``RAY_ADDRESS``, else the local default."""
    return (os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
            or DEFAULT_ADDRESS)


@contextlib.contextmanager
def _without_env(*names: str) -> Iterator[None]:
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None = None):
    """A ``ray.job_submission.JobSubmissionClient`` for ``address`` (default :func:`default_address`).

    An explicit ``address`` wins over ``RAY_ADDRESS`` / ``RAY_API_SERVER_ADDRESS``: Ray's client
    would otherwise silently prefer the environment, which inside a Ray job or a shell set up for
    another cluster sends the submission somewhere else than the user asked.

    Raises
    ------
    SubmitError
        The Jobs API does not answer at that address (with the address and Ray's reason).
    """
    from ray.job_submission import JobSubmissionClient

    target = address or default_address()
    try:
        with _without_env("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            return JobSubmissionClient(target)
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
        hint = ""
        if "401" in str(exc) or "403" in str(exc) or "auth" in str(exc).lower():
            hint = (" (the cluster uses token authentication: set RAY_AUTH_MODE=token and put the "
                    "cluster's token in ~/.ray/auth_token)")
        raise SubmitError(f"cannot reach the Ray Jobs API at {target}: {exc}{hint}") from None


@contextlib.contextmanager
def job_api_errors(what: str) -> Iterator[None]:
    """Raise the Jobs SDK's HTTP errors inside the block as :class:`SubmitError` naming ``what``.

    The SDK raises a bare ``RuntimeError`` ("Request failed with status code 404: ...") for an
    unknown job or a refused request: a known failure, not a bug, so it joins the family the
    command line reports in one line.
    """
    try:
        yield
    except RuntimeError as exc:
        raise SubmitError(f"{what}: {exc}" if what else str(exc)) from exc


# ------------------------------------------------------------------------------------------------
# the wheel
# ------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Root of somnray's cache: ``$SOMNRAY_CACHE_DIR``, else ``$XDG_CACHE_HOME/somnray`` or ``~/.cache/somnray``."""
    if os.environ.get("SOMNRAY_CACHE_DIR"):
        return Path(os.environ["SOMNRAY_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "somnray"


def find_source_root(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The checkout holding somnray's ``pyproject.toml`` above ``start`` (default: this package).

    Returns None when somnray runs from an installed wheel rather than a checkout.
    """
    here = Path(start) if start is not None else Path(__file__).resolve().parent
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and re.search(r'^name\s*=\s*"somnray"', pyproject.read_text(encoding="utf-8"),
                                             re.MULTILINE):
            return folder
    return None


def _package_dirs(root: Path) -> list[str]:
    """Folders the build maps into packages (``[tool.setuptools.package-dir]`` values)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = config.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    dirs = sorted({d for d in mapping.values() if d})
    if not dirs:
        raise SubmitError(f"{root / 'pyproject.toml'}: no [tool.setuptools] package-dir mapping; "
                          f"cannot tell which folders make up the somnray wheel")
    return dirs


def source_files(root: Path) -> list[Path]:
    """Every file the wheel is built from, relative to ``root``, sorted."""
    files = [Path(name) for name in _BUILD_FILES if (root / name).is_file()]
    for folder in _package_dirs(root):
        base = root / folder
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
            for name in filenames:
                if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                    continue
                files.append((Path(dirpath) / name).relative_to(root))
    return sorted(set(files))


def source_hash(root: Path, files: Sequence[Path] | None = None) -> str:
    """Hash of the paths and contents of the wheel's source files (16 hex digits)."""
    digest = hashlib.sha256()
    for rel in files if files is not None else source_files(root):
        digest.update(rel.as_posix().encode() + b"\0")
        digest.update((root / rel).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class BuiltWheel:
    """A wheel built from a checkout, and its unpacked content.

    Attributes
    ----------
    wheel : Path
        The ``.whl`` file.
    site : Path
        The wheel unpacked (``somnray/`` and ``somnray-<version>.dist-info/``), as ``pip install``
        would lay it out in ``site-packages``.
    source_hash : str
        Hash of the sources it was built from (its cache key).
    """

    wheel: Path
    site: Path
    source_hash: str

    @property
    def py_modules(self) -> list[str]:
        """The ``runtime_env["py_modules"]`` entries: the package and its metadata folders."""
        return [str(p) for p in sorted(self.site.iterdir())
                if p.is_dir() and (p.name == "somnray" or p.name.endswith(".dist-info"))]

    @property
    def version(self) -> str:
        """The distribution version, from the wheel's file name."""
        return self.wheel.name.split("-")[1]


def build_wheel(source: str | os.PathLike[str] | None = None, *, cache: Path | None = None,
                python: str | None = None) -> BuiltWheel:
    """Build (or reuse) the somnray wheel of a checkout.

    The sources (``pyproject.toml``, ``README.md`` and the mapped package folders) are hashed; a
    wheel built from the same sources is reused from ``<cache>/wheels/<hash>``.  Otherwise the
    sources are copied to a temporary folder (the checkout gets no ``build/`` litter, and files
    outside the package folders cannot leak into the wheel) and built there with
    ``pip wheel --no-deps --no-build-isolation`` (no network: setuptools comes from this
    environment).  The finished folder is moved into place atomically, so concurrent builds of
    the same sources are safe.

    Parameters
    ----------
    source : path, optional
        The checkout (default: the one this module was imported from).
    cache : Path, optional
        Cache root (default :func:`cache_dir`).
    python : str, optional
        Interpreter running pip (default: this one).

    Raises
    ------
    SubmitError
        No checkout found, or the build failed (with pip's output).
    """
    root = Path(source).resolve() if source is not None else find_source_root()
    if root is None or not (root / "pyproject.toml").is_file():
        raise SubmitError(
            f"{source or Path(__file__).resolve().parent}: not a somnray source checkout (no "
            f"pyproject.toml); pass --source DIR, or --use-installed when the cluster's image "
            f"already has the somnray version you want")
    files = source_files(root)
    key = source_hash(root, files)
    final = (cache or cache_dir()) / "wheels" / key
    built = _existing_build(final, key)
    if built is not None:
        log.info("reusing the somnray wheel %s", built.wheel)
        return built

    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        src = work / "src"
        for rel in files:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, src / rel)
        cmd = [python or sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
               "--disable-pip-version-check", "--quiet", "--wheel-dir", str(work), str(src)]
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
        if proc.returncode != 0:
            raise SubmitError(f"building the somnray wheel from {root} failed ({shlex.join(cmd)}):\n"
                              f"{(proc.stdout + proc.stderr)[-4000:]}")
        wheels = sorted(work.glob("somnray-*.whl"))
        if len(wheels) != 1:
            raise SubmitError(f"building the somnray wheel from {root} gave {len(wheels)} wheels "
                              f"in {work}, expected one")
        shutil.rmtree(src)
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extractall(work / "site")
        log.info("built %s in %.1f s", wheels[0].name, time.monotonic() - started)
        try:
            os.rename(work, final)
        except OSError:
            # Another process finished the same build first: use theirs.
            if _existing_build(final, key) is None:
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    built = _existing_build(final, key)
    if built is None:  # pragma: no cover - the rename above guarantees it
        raise SubmitError(f"{final}: the wheel cache entry is incomplete; delete it and retry")
    _prune(final.parent, keep=KEEP_WHEELS)
    return built


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recently built wheel folders (every edit makes a new one)."""
    entries = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _existing_build(folder: Path, key: str) -> BuiltWheel | None:
    wheels = sorted(folder.glob("somnray-*.whl")) if folder.is_dir() else []
    if len(wheels) == 1 and (folder / "site" / "somnray").is_dir():
        return BuiltWheel(wheel=wheels[0], site=folder / "site", source_hash=key)
    return None


# ------------------------------------------------------------------------------------------------
# commands: local validation and rewriting
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PreparedCommand:
    """A validated ``somnray`` command, ready to run on the cluster.

    Attributes
    ----------
    command : str
        The sub-command (``prepare``, ``train``, ...).
    argv : tuple of str
        Its arguments as the cluster runs them (config files renamed to their staged copies, local
        paths made absolute).
    uploads : dict
        Staged name (relative to the ``working_dir``) → local file to copy there.
    warnings : tuple of str
        Things that will work only if the cluster can see them (local paths).
    summary : str
        One line describing what was validated (shown to the user).
    """

    command: str
    argv: tuple[str, ...]
    uploads: Mapping[str, Path]
    warnings: tuple[str, ...] = ()
    summary: str = ""

    @property
    def cli_args(self) -> list[str]:
        """``[command, *argv]``: what follows ``somnray`` on the cluster."""
        return [self.command, *self.argv]


class _Raising(argparse.ArgumentParser):
    """A parser raising :class:`ConfigError` on a bad argument instead of printing usage and exiting."""

    def error(self, message: str):  # argparse hook
        raise ConfigError(self.prog, [message])


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``somnray <command>``'s arguments, from the declaration the local CLI uses.

    Built from ``somnray.jobs.cmd_<command>.add_arguments``, so submission accepts exactly what the
    command accepts; a bad argument raises :class:`ConfigError` instead of exiting.

    Raises
    ------
    ConfigError
        ``command`` is not one of :data:`SUBMITTABLE`.
    """
    if command not in SUBMITTABLE:
        raise ConfigError(f"somnray submit {command}",
                          [f"cannot submit {command!r}; choose one of {', '.join(SUBMITTABLE)}"])
    parser = _Raising(prog=f"somnray {command}", add_help=False)
    importlib.import_module(f"somnray.jobs.cmd_{command}").add_arguments(parser)
    return parser


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Arguments that ``parser`` parses back into ``args``: the positionals, then every option
    whose value is not its default, in declaration order.

    Raises
    ------
    TypeError
        ``parser`` declares an action this cannot write back (sub-parsers, a custom action).
    """
    positionals: list[str] = []
    options: list[str] = []
    # argparse keeps the declared actions in ``_actions``; it has no public accessor for them.
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        value = getattr(args, action.dest)
        if not action.option_strings and isinstance(action, argparse._StoreAction):
            positionals += _words(action, value)
            continue
        flag = max(action.option_strings, key=len) if action.option_strings else None
        if isinstance(action, argparse._StoreConstAction):  # also store_true and store_false
            options += [flag] if value != action.default else []
        elif isinstance(action, argparse._AppendAction):
            options += [word for item in value[len(action.default or []):] for word in (flag, str(item))]
        elif isinstance(action, argparse._CountAction):
            options += [flag] * ((value or 0) - (action.default or 0))
        elif isinstance(action, argparse._StoreAction):
            options += [flag, *_words(action, value)] if value != action.default else []
        else:
            raise TypeError(f"{parser.prog}: cannot write a {type(action).__name__} ({action.dest!r}) "
                             f"back into a command line")
    return positionals + options


def _words(action: argparse.Action, value: Any) -> list[str]:
    """The command-line words of one stored value (a list for ``nargs`` that take several)."""
    if value is None:
        return []
    if action.nargs in ("+", "*", argparse.REMAINDER) or isinstance(action.nargs, int):
        return [str(v) for v in value]
    return [str(value)]


def _check_uri(value: str, what: str, errors: list[str], warnings: list[str]) -> str:
    """Parse a URI; make plain local paths absolute (the job's working directory is elsewhere)."""
    from somnray.core.storage import resolve

    try:
        location = resolve(value)
    except ConfigError as exc:
        errors += [f"{what}: {e}" for e in exc.errors]
        return value
    if location.is_local:
        warnings.append(f"{what} is a local path ({location.path}): the cluster reads it on its own "
                        f"nodes, so it must be on a filesystem they share (use s3://... otherwise)")
        return location.path
    return value


def _stage(path: str, what: str, uploads: dict[str, Path], errors: list[str]) -> str:
    """Register a local file for upload; returns its name relative to the working_dir."""
    file = Path(path).expanduser()
    if not file.is_file():
        errors.append(f"{what}: no such file: {path}")
        return path
    name = f"{STAGED_CONFIGS}/{file.name}"
    stem, suffix = os.path.splitext(file.name)
    n = 1
    while name in uploads and uploads[name].resolve() != file.resolve():
        n += 1
        name = f"{STAGED_CONFIGS}/{stem}-{n}{suffix}"
    uploads[name] = file.resolve()
    return name


def _check_experiment_uris(cfg, errors: list[str], warnings: list[str]) -> None:
    """Relative local paths inside a config would resolve against the job's working directory."""
    from somnray.core.storage import resolve

    seen: set[str] = set()
    named = [("storage.uri", cfg.storage.uri)]
    named += [(f"phases[{p.name}].data.dataset", p.data.dataset) for p in cfg.phases]
    for what, value in named:
        if value in seen:
            continue
        seen.add(value)
        location = resolve(value)
        if not location.is_local:
            continue
        plain = value if "://" not in value else None
        if plain is not None and not os.path.isabs(os.path.expanduser(plain)):
            errors.append(f"{what}: {value!r} is a relative local path; on the cluster it would resolve "
                          f"against the job's temporary working directory: give an absolute path or "
                          f"a URI (s3://...)")
        else:
            warnings.append(f"{what} is a local path ({location.path}): it must exist on the cluster's "
                            f"nodes (a shared filesystem); use s3://... for a remote cluster")


def _check_search_space(path: str, cfg, errors: list[str]) -> None:
    """Validate a search space against the experiment with ``somnray.tune.space.load_space``."""
    from somnray.tune.space import load_space

    try:
        load_space(path, cfg)
    except ConfigError as exc:
        errors += [f"{exc.source}: {e}" for e in exc.errors]


def _stage_profile(value: str, what: str, uploads: dict[str, Path], errors: list[str]) -> tuple[str, str]:
    """Load a profile (name or path) locally; a path is staged.  Returns (argument, profile name)."""
    from somnray.data.profiles import load_profile

    try:
        profile = load_profile(value)
    except ConfigError as exc:
        errors += [f"{what} {value}: {e}" for e in exc.errors]
        return value, ""
    if Path(value).expanduser().is_file():
        return _stage(value, what, uploads, errors), profile.name
    return value, profile.name


def prepare_command(command: str, argv: Sequence[str]) -> PreparedCommand:
    """Validate ``somnray <command> <argv>`` locally and rewrite it to run on the cluster.

    The arguments are parsed by the command's own declaration (:func:`command_parser`) and the
    cluster's command line is written back from the parsed values (:func:`command_line`).

    Parameters
    ----------
    command : str
        One of :data:`SUBMITTABLE`.
    argv : sequence of str
        The sub-command's arguments as the user typed them.

    Returns
    -------
    PreparedCommand

    Raises
    ------
    ConfigError
        Listing every problem found (every config validation error, unknown profile, malformed
        URIs), or the first bad argument; nothing has been submitted.
    """
    from somnray.jobs.cmd_train import cli_overrides
    from somnray.jobs.cmd_tune import argument_problems

    from somnray.scoring.registry import is_registry_uri

    source = f"somnray submit {command}"
    parser = command_parser(command)
    args = parser.parse_args(list(argv))
    errors: list[str] = []
    warnings: list[str] = []
    uploads: dict[str, Path] = {}
    summary = ""

    # The namespace is rewritten in place (URIs made absolute, configs renamed to their staged
    # copies) and written back as a command line by the same parser.
    if command == "prepare":
        args.profile, name = _stage_profile(args.profile, "--profile", uploads, errors)
        summary = f"cohort profile {name!r}" if name else ""
        args.input = _check_uri(args.input, "INPUT", errors, warnings)
        if args.hypnogram is not None:
            args.hypnogram = _check_uri(args.hypnogram, "--hypnogram", errors, warnings)
        args.out = _check_uri(args.out, "--out", errors, warnings)
    elif command == "score":
        summary = f"{len(args.inputs)} input(s) scored with the run at {args.run}"
        # A registered model (models:/…) is resolved by the job against its own MLFLOW_TRACKING_URI.
        if not is_registry_uri(args.run):
            args.run = _check_uri(args.run, "RUN_URI", errors, warnings)
        args.inputs = [_check_uri(u, "INPUT", errors, warnings) for u in args.inputs]
        args.out = _check_uri(args.out, "--out", errors, warnings)
        if args.profile is not None:
            args.profile = _stage_profile(args.profile, "--profile", uploads, errors)[0]
    elif command == "tune" and (problems := argument_problems(args)):
        errors += problems
    elif command == "tune" and args.resume is not None:
        summary = f"resume the search at {args.resume}"
        args.resume = _check_uri(args.resume, "--resume", errors, warnings)
    else:  # train, or a new search
        from somnray.train.config import load_experiment

        if command == "train" and args.run_uri is not None:
            args.run_uri = _check_uri(args.run_uri, "--run-uri", errors, warnings)
        cfg = None
        try:
            # Validated as the command will load it: train's --run-uri and --workers included.
            overrides = (cli_overrides(args.config, args.overrides, args.run_uri, args.workers)
                         if command == "train" else args.overrides)
            cfg = load_experiment(args.config, overrides)
            summary = (f"experiment {cfg.storage.name!r}: {len(cfg.phases)} phase(s) "
                       f"({', '.join(p.name for p in cfg.phases)}), run folder {cfg.run_uri}")
            _check_experiment_uris(cfg, errors, warnings)
        except ConfigError as exc:
            errors += [f"{exc.source}: {e}" for e in exc.errors]
        args.config = _stage(args.config, "CONFIG", uploads, errors)
        if command == "tune":
            if cfg is not None and Path(args.space).expanduser().is_file():
                _check_search_space(args.space, cfg, errors)
            args.space = _stage(args.space, "SPACE", uploads, errors)
    if command == "tune" and args.storage is not None:
        args.storage = _check_uri(args.storage, "--storage", errors, warnings)

    if errors:
        raise ConfigError(source, errors)
    return PreparedCommand(command, tuple(command_line(parser, args)), dict(uploads), tuple(warnings), summary)


# ------------------------------------------------------------------------------------------------
# runtime environment and submission
# ------------------------------------------------------------------------------------------------
def entrypoint_for(prepared: PreparedCommand, python: str = "python") -> str:
    """The shell command the job runs: ``python -m somnray.jobs <command> …``.

    ``python -m`` rather than the ``somnray`` console script: a shipped wheel is importable
    through ``py_modules`` but installs no script, and the module form works in both cases.
    """
    return shlex.join([python, "-m", "somnray.jobs", *prepared.cli_args])


def stage_working_dir(prepared: PreparedCommand, folder: Path) -> Path:
    """Copy the command's uploads into ``folder`` (the job's ``working_dir``); returns it.

    The folder holds only these files: never the checkout (see the module docstring).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name, file in prepared.uploads.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
    # An empty working_dir is rejected by nothing, but a marker makes the staged folder obvious in
    # the cluster's runtime_resources when someone looks.
    (folder / "SOMNRAY_SUBMISSION").write_text(shlex.join(["somnray", *prepared.cli_args]) + "\n",
                                               encoding="utf-8")
    return folder


def build_runtime_env(working_dir: Path, wheel: BuiltWheel | None,
                      env_vars: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The job's ``runtime_env``: staged configs as ``working_dir``, the wheel as ``py_modules``."""
    runtime_env: dict[str, Any] = {"working_dir": str(working_dir)}
    if wheel is not None:
        runtime_env["py_modules"] = wheel.py_modules
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return runtime_env


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` (or ``KEY``: the local value) items of ``--env`` as a mapping.

    Raises
    ------
    ConfigError
        An item is malformed, or a bare ``KEY`` is not set locally.
    """
    out: dict[str, str] = {}
    errors = []
    for item in items:
        key, sep, value = item.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            errors.append(f"--env {item!r}: expected KEY=VALUE or KEY (a variable name)")
        elif sep:
            out[key] = value
        elif key in os.environ:
            out[key] = os.environ[key]
        else:
            errors.append(f"--env {key}: not set in this environment (give KEY=VALUE)")
    if errors:
        raise ConfigError("somnray submit --env", errors)
    return out


@dataclasses.dataclass(frozen=True)
class Submission:
    """A submitted job."""

    submission_id: str
    address: str
    entrypoint: str
    wheel: BuiltWheel | None


#: What a Ray head answers a submission while its job agent has not registered yet.
NO_AGENT = "No available agent to submit job"
#: How long a submission waits for the head's job agent, and the pause between attempts.
AGENT_WAIT_S = 120.0
AGENT_RETRY_S = 2.0


def submit(prepared: PreparedCommand, *, address: str | None = None, use_installed: bool = False,
           source: str | os.PathLike[str] | None = None, env_vars: Mapping[str, str] | None = None,
           submission_id: str | None = None, entrypoint_num_cpus: float | None = None,
           entrypoint_num_gpus: float | None = None, client=None) -> Submission:
    """Package, stage and submit a validated command; returns once the job is queued.

    Parameters
    ----------
    prepared : PreparedCommand
        From :func:`prepare_command`.
    address : str, optional
        Jobs API address (``http://HEAD:8265``); default :func:`default_address`.
    use_installed : bool
        Run the somnray installed in the cluster's image: no wheel is built or shipped.
    source : path, optional
        The checkout to build the wheel from (default: this package's).
    env_vars : mapping, optional
        Extra environment variables of the job (visible in the dashboard: no secrets).
    submission_id : str, optional
        The job's id (default: Ray's ``raysubmit_…``).
    entrypoint_num_cpus, entrypoint_num_gpus : float, optional
        Resources reserved for the driver process itself.
    client : JobSubmissionClient, optional
        An existing client (default: :func:`connect` to ``address``).

    Raises
    ------
    SubmitError
        The wheel build failed or the cluster refused the job.
    """
    wheel = None if use_installed else build_wheel(source)
    client = client or connect(address)
    staging = Path(tempfile.mkdtemp(prefix="somnray-submit-"))
    try:
        stage_working_dir(prepared, staging / "job")
        runtime_env = build_runtime_env(staging / "job", wheel, env_vars)
        entrypoint = entrypoint_for(prepared)
        metadata = {"somnray_command": prepared.command, "submitted_with": "somnray submit"}
        if wheel is not None:
            metadata.update(somnray_version=wheel.version, somnray_source_hash=wheel.source_hash)
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                           metadata=metadata, submission_id=submission_id,
                                           entrypoint_num_cpus=entrypoint_num_cpus,
                                           entrypoint_num_gpus=entrypoint_num_gpus)
                break
            except (RuntimeError, ValueError, ConnectionError, OSError) as exc:
                # A head that has just started (or is busy) answers this until its job agent has
                # registered, after only 10 s of waiting itself; the job was not recorded, so
                # submitting again is safe.
                if NO_AGENT in str(exc) and time.monotonic() < deadline:
                    log.info("the cluster at %s has no job agent yet; submitting again", client.get_address())
                    time.sleep(AGENT_RETRY_S)
                    continue
                raise SubmitError(f"the cluster at {client.get_address()} refused the job: {exc}") from None
    finally:
        # The client has uploaded the working_dir and py_modules to the cluster by now.
        shutil.rmtree(staging, ignore_errors=True)
    return Submission(job_id, client.get_address(), entrypoint, wheel)


# ------------------------------------------------------------------------------------------------
# watching jobs
# ------------------------------------------------------------------------------------------------
def wait(client, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None) -> str:
    """Poll until the job reaches a terminal state; returns it (``SUCCEEDED``, ``FAILED``, ``STOPPED``).

    Raises
    ------
    TimeoutError
        ``timeout_s`` elapsed first.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL_STATES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:g} s")
        time.sleep(poll_s)


def follow_logs(client, job_id: str, out=None) -> str:
    """Stream the job's logs to ``out`` (default stdout) until it ends; returns its final state."""
    import asyncio

    stream = out or sys.stdout

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            stream.write(chunk)
            stream.flush()

    asyncio.run(_tail())
    # The log stream closes when the job ends; the status may lag by a poll.
    return wait(client, job_id, poll_s=0.5)


def exit_code_of(client, job_id: str, status: str) -> int:
    """The exit status ``somnray submit --wait`` returns: the driver's when known, else 0/1."""
    if status == "SUCCEEDED":
        return 0
    try:
        code = client.get_job_info(job_id).driver_exit_code
    except Exception:  # noqa: BLE001 - older servers have no such field; fall back to 1
        code = None
    return int(code) if code not in (None, 0) else 1
