"""Output locations that cannot be written: `prepare` and `score` stop with one line naming the URI
and what to do, exit 1, and print the traceback only with --debug.

The stores are real: the session's moto S3 server (its credentials removed for the credentials
case), a closed loopback port, an HTTP URI, a file where the output folder should be, and /sys
(which refuses writes even to root).  Every case fails before Ray is started.
"""

from __future__ import annotations

import re

import pytest
from loopback import free_port  # tests/ is on sys.path (conftest.py)
from somnray.jobs.cli import main

NO_CREDENTIALS = ("no credentials for this store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                  "(or AWS_PROFILE), or pass key and secret in the storage options")
READ_ONLY = "http:// locations are read-only: write outputs to a local path, file:// or s3://bucket/prefix"
PERMISSION = ("permission denied: use a location this user (or these credentials) may read and write, "
              "or grant access to it")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny coresleep bundle for `somnray score`."""
    from somnray.models import create_model
    from somnray.models.bundle import save_bundle

    return save_bundle(create_model("coresleep_tiny"), tmp_path_factory.mktemp("run") / "model",
                       name="coresleep_tiny", sequence_length=10, extra={"profile": "sleep-edf"})


@pytest.fixture
def command(synth_cohort, bundle):
    """``command(name, out)``: the argv of `prepare` or `score` on a 1-night cohort into ``out``."""
    cohort = synth_cohort("sleep-edf", n_nights=1, hours=1.0, seed=31)

    def argv(name: str, out: str) -> list[str]:
        if name == "prepare":
            return ["prepare", str(cohort.manifest), "--profile", "sleep-edf", "--out", out, "--no-progress"]
        return ["score", str(bundle), str(cohort.manifest), "--out", out, "--no-progress"]

    return argv


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def _expected(name: str, out: str, problem: str) -> re.Pattern:
    # prepare first writes <out>/<profile>-<version>/entries.csv; score first lists <out> itself.
    where = re.escape(out) + (r"/sleep-edf-[0-9a-f]{12}/entries\.csv" if name == "prepare" else "")
    return re.compile(rf"somnray {name}: error: {where}: {re.escape(problem)}")


@pytest.mark.integration
@pytest.mark.parametrize("name", ["prepare", "score"])
def test_s3_output_without_credentials(name, command, s3_server, monkeypatch, tmp_path, capsys):
    """An S3 output with no credentials anywhere is one line saying which variables to set."""
    out = s3_server.make_bucket() + "/out"
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert main(command(name, out)) == 1
    assert _expected(name, out, NO_CREDENTIALS).fullmatch(_one_line_error(capsys))


@pytest.mark.parametrize("name", ["prepare", "score"])
def test_refused_s3_endpoint(name, command, monkeypatch, capsys):
    """An S3 endpoint that refuses connections is one line naming the endpoint to check."""
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    out = "s3://somnray-refused/out"
    assert main(command(name, out)) == 1
    problem = (f"cannot connect to the endpoint {endpoint}: check that it is running and reachable, "
               "and the endpoint setting (AWS_ENDPOINT_URL or endpoint_url)")
    assert _expected(name, out, problem).fullmatch(_one_line_error(capsys))


@pytest.mark.parametrize("name", ["prepare", "score"])
def test_http_output_is_refused_before_any_attempt(name, command, capsys):
    """An http:// output is refused as read-only, naming the URI, without contacting the host."""
    out = f"http://127.0.0.1:{free_port()}/out"
    assert main(command(name, out)) == 1
    # Refused where the output folder is made, before any file is written.
    pattern = re.compile(rf"somnray {name}: error: {re.escape(out)}(/sleep-edf-[0-9a-f]{{12}})?: "
                         f"{re.escape(READ_ONLY)}")
    assert pattern.fullmatch(_one_line_error(capsys))


@pytest.mark.parametrize("name", ["prepare", "score"])
def test_out_naming_an_existing_file(name, command, tmp_path, capsys):
    """--out naming a file is one line saying a folder is needed, and the file is left alone."""
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert main(command(name, str(target))) == 1
    line = _one_line_error(capsys)
    assert re.fullmatch(rf"somnray {name}: error: file://{re.escape(str(target))}(/sleep-edf-[0-9a-f]{{12}})?: "
                        rf"{re.escape(str(target))} is a file where a folder is needed: name a new or "
                        r"existing folder", line), line
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("name", ["prepare", "score"])
def test_output_without_permission(name, command, capsys):
    """An output folder this user may not create is one line saying so, with the URI."""
    out = "/sys/somnray-forbidden/out"
    assert main(command(name, out)) == 1
    line = _one_line_error(capsys)
    assert re.fullmatch(rf"somnray {name}: error: file://{re.escape(out)}(/sleep-edf-[0-9a-f]{{12}})?: "
                        f"{re.escape(PERMISSION)}", line), line


def test_debug_adds_the_traceback_and_its_cause(command, tmp_path, capsys):
    """--debug prints the traceback, the original OS error chained under the one-line message."""
    target = tmp_path / "results.txt"
    target.write_text("x")
    assert main(["--debug", *command("score", str(target))]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "FileExistsError" in err and "StorageError" in err
    assert err.strip().splitlines()[-1].startswith(f"somnray score: error: file://{target}: ")


def test_synth_output_failures_are_one_line(tmp_path, capsys):
    """`somnray synth` refuses a URI it cannot write (it writes local EDF files) and reports a file
    in the way or a forbidden folder as one line naming the location."""
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    cases = {
        "http://127.0.0.1:9/x": "http://127.0.0.1:9/x: somnray synth writes to a local folder: give a "
                                "path or file:///path",
        str(target): f"file://{target}: {target} is a file where a folder is needed: name a new or "
                     "existing folder",
        "/sys/somnray-forbidden": f"file:///sys/somnray-forbidden: {PERMISSION}",
    }
    for out, message in cases.items():
        assert main(["synth", "--profile", "generic", "--nights", "1", "--hours", "0.2", "--out", out]) == 1
        assert _one_line_error(capsys) == f"somnray synth: error: {message}"
    assert target.read_text() == "keep me"
