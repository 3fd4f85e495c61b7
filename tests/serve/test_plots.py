"""Pictures: valid PNGs of plausible size with the panels and labels a reader needs."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from night_factory import night_from_stages, realistic_night  # tests/serve is on sys.path

from somnray.core.errors import RecordingError
from somnray.serve.outputs import rejected_row, stats_document, summary_row
from somnray.serve.plots import cohort_png, night_png, plot_cohort, plot_night

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_night_png_is_a_plausible_picture():
    """A night renders to a wide PNG of tens of kilobytes (not blank, not enormous)."""
    data = night_png(realistic_night())
    width, height = _png_size(data)
    assert 1000 <= width <= 2000 and 500 <= height <= 1000 and width > height
    assert 30_000 < len(data) < 2_000_000
    assert data.endswith(b"IEND\xaeB`\x82")


def test_night_figure_panels_and_axes():
    """Hypnogram, hypnodensity and availability share an hours axis starting at the recording start."""
    night = realistic_night()
    fig = plot_night(night)
    ax_h, ax_p, ax_a = fig.axes[:3]
    assert [t.get_text() for t in ax_h.get_yticklabels()] == ["W", "REM", "N1", "N2", "N3"]
    assert [t.get_text() for t in ax_a.get_yticklabels()] == ["eeg", "eog", "emg"]
    assert ax_a.get_xlabel() == "hours from recording start"
    lo, hi = ax_a.get_xlim()
    assert lo == pytest.approx(0.0) and hi == pytest.approx(8.0)
    assert ax_p.get_ylim() == (0.0, 1.0)
    assert "psg-0001" in fig._suptitle.get_text()
    # one grey band per unscored run (the 2-min signal loss)
    assert len([p for p in ax_h.patches if p.get_alpha() == 0.5]) == 1


def test_night_with_gaps_offset_and_no_sleep_renders():
    """Index gaps, a start offset, unscored epochs and a night without sleep all draw."""
    night = night_from_stages([0, 0, -1, 0], epoch_index=[0, 1, 5, 6], start_offset_s=3600.0)
    data = night_png(night)
    assert _png_size(data)[0] > 1000
    fig = plot_night(night)
    assert fig.axes[2].get_xlim()[0] == pytest.approx(1.0)


def test_empty_night_is_refused():
    """There is nothing to draw for a night without epochs."""
    with pytest.raises(RecordingError, match="no epochs"):
        night_png(night_from_stages([]))


def test_cohort_png_with_rejected_and_missing_values():
    """The cohort picture plots the ok nights and tolerates rejected rows and undefined values."""
    rng = np.random.default_rng(1)
    rows = []
    for k in range(12):
        stages = rng.choice([0, 1, 2, 3, 4], size=200, p=[0.15, 0.05, 0.5, 0.15, 0.15])
        rows.append(summary_row(stats_document(night_from_stages(stages, recording_id=f"n{k}"))))
    rows.append(summary_row(stats_document(night_from_stages([0, 0, 0], recording_id="awake"))))
    rows.append(rejected_row("bad", "no EEG"))
    data = cohort_png(rows)
    width, height = _png_size(data)
    assert width > height and 20_000 < len(data) < 2_000_000
    fig = plot_cohort(rows)
    assert [ax.get_title() for ax in fig.axes] == ["Total sleep time", "Sleep efficiency",
                                                   "Stages (% of TST)"]
    assert "13 nights scored, 1 not scored" in fig._suptitle.get_text()
    # every scored night is a point in the TST panel
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 13


def test_cohort_png_with_no_scored_night():
    """A cohort where everything was rejected still yields a (mostly empty) picture."""
    assert cohort_png([rejected_row("a", "x")])[:8] == PNG_MAGIC
