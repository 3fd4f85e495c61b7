"""Storage URIs: parsing, local and S3 (moto) reads/writes, atomic writes, local copies."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from somnray.core import storage
from somnray.core.errors import ConfigError


def test_plain_path_becomes_file_uri(tmp_path):
    """A plain relative path resolves to an absolute file:// location."""
    os.chdir(tmp_path)
    loc = storage.resolve("sub/x.txt")
    assert loc.protocol == "file"
    assert loc.path == str(tmp_path / "sub" / "x.txt")
    assert loc.uri == f"file://{tmp_path}/sub/x.txt"
    assert storage.resolve(loc.uri).path == loc.path


def test_s3_uri_parts_and_join():
    """s3:// URIs split into bucket/key paths, and join appends with slashes."""
    loc = storage.resolve("s3://my-bucket/a/b/", {"endpoint_url": "http://127.0.0.1:1"})
    assert (loc.protocol, loc.path, loc.uri) == ("s3", "my-bucket/a/b", "s3://my-bucket/a/b")
    child = loc.join("recordings", "r1.parquet")
    assert child.uri == "s3://my-bucket/a/b/recordings/r1.parquet"
    assert child.path == "my-bucket/a/b/recordings/r1.parquet"
    assert child.name == "r1.parquet" and child.parent.uri == "s3://my-bucket/a/b/recordings"


@pytest.mark.parametrize("uri, fragment", [
    ("", "empty storage URI"),
    ("s3://", "without a bucket"),
    ("s3:///key", "without a bucket"),
    ("s3:/bucket/key", "malformed URI"),
    ("nosuchproto://x/y", "unknown or unavailable storage protocol 'nosuchproto'"),
    ("s3://Bad_Bucket!/k", "not a valid S3 bucket name"),
    ("file://host/path", "file:// URIs need an absolute path"),
])
def test_bad_uris_raise_config_error_naming_the_uri(uri, fragment):
    """Malformed, bucket-less or unknown-protocol URIs raise ConfigError naming URI and problem."""
    with pytest.raises(ConfigError) as info:
        storage.resolve(uri)
    msg = str(info.value)
    assert fragment in msg
    if uri:
        assert uri in msg


def test_env_endpoint_and_credentials_are_captured(monkeypatch):
    """AWS_* variables fill the S3 options; explicit storage_options win."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9999")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://ignored:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s1")
    loc = storage.resolve("s3://bucket/x")
    assert loc.storage_options == {"endpoint_url": "http://127.0.0.1:9999", "key": "k1", "secret": "s1"}
    loc2 = storage.resolve("s3://bucket/x", {"key": "k2", "secret": "s2", "endpoint_url": "http://h:2"})
    assert loc2.storage_options["key"] == "k2" and loc2.storage_options["endpoint_url"] == "http://h:2"
    assert "s1" not in repr(loc) and "k1" not in repr(loc)
    fs = loc.pyarrow_filesystem()
    opts = fs.__reduce__()[1][0]  # pyarrow exposes its S3 options only through pickling
    assert type(fs).__name__ == "S3FileSystem"
    assert (opts["endpoint_override"], opts["scheme"], opts["access_key"]) == ("127.0.0.1:9999", "http", "k1")


def test_local_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    """Local atomic writes create parents, replace content whole, and leave no temporary file."""
    loc = storage.resolve(tmp_path / "a" / "b.bin")
    loc.atomic_write_bytes(b"one")
    loc.atomic_write_bytes(b"two")
    assert loc.read_bytes() == b"two"
    assert os.listdir(tmp_path / "a") == ["b.bin"]


def test_local_atomic_write_failure_keeps_previous_content(tmp_path, monkeypatch):
    """A write that fails midway leaves the previous file intact and no partial file visible."""
    loc = storage.resolve(tmp_path / "f.txt")
    loc.write_text("old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        loc.write_text("new")
    assert loc.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_find_skips_hidden_temporaries(tmp_path):
    """find lists files recursively, sorted, and ignores hidden in-flight temporaries."""
    (tmp_path / "d").mkdir()
    for name in ("d/b.parquet", "a.parquet", "d/.b.parquet.123.tmp", "c.json"):
        (tmp_path / name).write_text("x")
    found = [loc.name for loc in storage.resolve(tmp_path).find(".parquet")]
    assert found == ["a.parquet", "b.parquet"]


def test_local_copy_of_local_file_is_the_file(tmp_path):
    """local_copy yields local files unchanged and names a missing file in its error."""
    p = tmp_path / "x.edf"
    p.write_bytes(b"abc")
    with storage.local_copy(str(p)) as path:
        assert path == str(p)
    with pytest.raises(FileNotFoundError, match="missing.edf"):
        with storage.local_copy(str(tmp_path / "missing.edf")):
            pass


def test_memory_protocol_roundtrip():
    """Another fsspec protocol (memory://) reads and writes through the same API."""
    loc = storage.resolve("memory://somnray-test/dir/x.txt")
    loc.write_text("hello")
    assert storage.read_text("memory://somnray-test/dir/x.txt") == "hello"
    assert loc.exists() and not storage.exists("memory://somnray-test/dir/y.txt")


@pytest.mark.integration
def test_s3_roundtrip_on_moto(s3_server, tmp_path):
    """Against moto: atomic write, read, exists, find, local_copy and pyarrow filesystem access."""
    bucket = s3_server.make_bucket()
    loc = storage.resolve(f"{bucket}/p/x.bin")  # endpoint and credentials from the environment
    assert not loc.exists()
    loc.atomic_write_bytes(b"payload")
    assert loc.exists() and loc.read_bytes() == b"payload"
    assert [f.uri for f in storage.resolve(f"{bucket}/p").find()] == [f"{bucket}/p/x.bin"]
    with loc.local_copy() as path:
        assert path.endswith("x.bin") and open(path, "rb").read() == b"payload"
    assert not os.path.exists(path)

    table = pa.table({"a": [1, 2, 3]})
    target = storage.resolve(f"{bucket}/p/t.parquet")
    fs = target.pyarrow_filesystem()
    pq.write_table(table, target.path, filesystem=fs)
    assert pq.read_table(target.path, filesystem=fs).equals(table)


@pytest.mark.integration
def test_s3_missing_file_names_uri(s3_server):
    """local_copy of a missing S3 object raises FileNotFoundError naming the URI."""
    bucket = s3_server.make_bucket()
    with pytest.raises(FileNotFoundError, match=f"{bucket}/nope.edf"):
        with storage.local_copy(f"{bucket}/nope.edf"):
            pass
