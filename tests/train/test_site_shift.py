"""Fine-tuning across a domain shift, end to end: a tiny model trained on synthetic site A, scored on
site B, fine-tuned on 4 labelled site-B nights with the shipped recipe (jobs/bench_finetune.py)."""

from __future__ import annotations

import pytest

from somnray.jobs import bench_finetune


@pytest.mark.slow
def test_finetuning_on_few_site_b_nights_lifts_site_b_without_losing_site_a(ray_local, tmp_path, one_torch_thread):
    """coresleep_tiny: site-B macro-F1 rises by at least 15 points, site-A macro-F1 drops by at most 10
    (measured: B 33 -> 66, A 79 -> 81)."""
    sizes = bench_finetune.QUICK
    a_uri, b_uri = bench_finetune.prepare_sites(tmp_path, sizes)
    row = bench_finetune.measure("coresleep_tiny", a_uri, b_uri, tmp_path / "runs", sizes)
    print(f"\n[site shift] {row}")
    assert row.finetune_nights == 4
    assert row.b_after >= row.b_before + 0.15, row
    assert row.a_after >= row.a_before - 0.10, row
