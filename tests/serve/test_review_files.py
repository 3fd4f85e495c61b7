"""The review's file contract: corrections round-trip, hypnogram CSVs read as corrections, bad rows rejected."""

from __future__ import annotations

import pytest
from somnray.core.errors import ConfigError
from somnray.serve.review_files import (
    corrections_location,
    parse_corrections_csv,
    read_corrections,
    read_table,
    write_corrections,
)


def test_corrections_round_trip_beside_the_scored_night(tmp_path) -> None:
    """Written corrections sit in the night's folder, are sorted by epoch and read back as codes."""
    uri = write_corrections(tmp_path, "night-1", {7: "N3", 2: "R", 3: 0}, start_offset_s=10.0)
    assert uri == corrections_location(tmp_path, "night-1").uri
    assert (tmp_path / "night-1" / "night-1_corrections.csv").read_text().splitlines() == [
        "epoch,onset_s,stage", "2,70,REM", "3,100,W", "7,220,N3"]
    assert read_corrections(tmp_path, "night-1") == {2: 4, 3: 0, 7: 3}
    assert read_corrections(tmp_path, "never-reviewed") == {}


def test_a_hypnogram_csv_reads_as_corrections_without_its_unscored_rows() -> None:
    """A technician's edited copy of <id>_hypnogram.csv is a valid corrections file; UNS rows are not reviews."""
    text = "epoch,onset_s,stage\n0,0,W\n1,30,UNS\n2,60,N1\n3,90,rem\n"
    assert parse_corrections_csv(text) == {0: 0, 2: 1, 3: 4}


@pytest.mark.parametrize("text, problem", [
    ("epoch,when\n1,W\n", "no stage column"),
    ("epoch,stage\n-1,W\n", "line 2: epoch '-1' is not a non-negative integer"),
    ("epoch,stage\n1,S5\n", "line 2: unknown stage 'S5'"),
    ("epoch,stage\n1,W\n1,N2\n", "line 3: epoch 1 is given two different stages"),
])
def test_bad_corrections_are_rejected_with_file_and_line(text: str, problem: str) -> None:
    """Each malformed corrections file is refused with one line naming the file, the line and the problem."""
    with pytest.raises(ValueError, match="^fixed.csv") as info:
        parse_corrections_csv(text, source="fixed.csv")
    assert problem in str(info.value)


def test_a_corrections_file_cannot_escape_the_scored_root(tmp_path) -> None:
    """A recording id that is not one safe path component is refused before any file is touched."""
    with pytest.raises(Exception, match="recording"):
        write_corrections(tmp_path, "../elsewhere", {0: "W"})
    assert not (tmp_path.parent / "elsewhere").exists()


def test_reading_a_review_that_was_never_made_says_what_to_run(tmp_path) -> None:
    """Asking for the queue of a scored root without a review names the command that makes one."""
    with pytest.raises(ConfigError, match="somnray review"):
        read_table(tmp_path, "queue.csv")
