"""One contestant of ``somnray bench score``, timed in a process of its own.

``python -m somnray.jobs.bench_contestants SPEC_JSON`` runs one scorer on one EDF night: one
untimed call first (imports resolved, numba and torch kernels compiled or chosen, first-call
allocations made), then ``repeats`` timed calls of the whole path *including the EDF read*, and
prints one JSON line with the wall times.  The parent (:mod:`somnray.jobs.bench_score`) starts each
contestant with ``OMP_NUM_THREADS`` and friends already in its environment, so numpy, torch,
numba and LightGBM all see the same thread count from their first import — setting them from
inside a process that has already imported numpy or torch has no effect.

Spec keys: ``kind`` (``somnray``, ``serve`` or ``yasa``), ``psg``, ``repeats``, ``threads``; for
somnray ``bundle`` and ``precision``; for serve ``url``, a running ``somnray serve`` whose model
replica has those threads (the call is the whole HTTP path: upload, EDF read, preprocessing,
model, answer); for YASA ``channels`` (``{"eeg": label, "eog": label[, "emg": label]}``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any


def _somnray(spec: dict[str, Any]) -> tuple[Callable[[], Any], dict[str, Any]]:
    import numpy as np
    import torch

    from somnray.scoring.scorer import Scorer
    from somnray.serve.inference import score_recording

    torch.set_num_threads(int(spec["threads"]))
    scorer = Scorer.load(spec["bundle"], device="cpu", precision=spec["precision"])

    def once():
        return score_recording(scorer, spec["psg"], recording_id="bench")

    facts: dict[str, Any] = {"precision": scorer.precision, "torch": torch.__version__}
    if scorer.precision != "fp32":
        # The stage agreement of this precision with fp32 on this very night.
        reference = Scorer.load(spec["bundle"], device="cpu", precision="fp32")
        a = score_recording(reference, spec["psg"], recording_id="bench").probabilities.argmax(axis=1)
        b = once().probabilities.argmax(axis=1)
        facts["agreement"] = float(np.mean(a == b))
    return once, facts


def _serve(spec: dict[str, Any]) -> tuple[Callable[[], Any], dict[str, Any]]:
    import requests

    url = spec["url"]
    body = open(spec["psg"], "rb").read()  # the client's file, read once: the upload is what is timed

    def once():
        r = requests.post(f"{url}/v1/score", files={"file": ("night.edf", body)}, timeout=600)
        r.raise_for_status()
        return r.json()["stages"]

    model = requests.get(f"{url}/healthz", timeout=30).json()["model"]
    return once, {"precision": model["precision"], "threads": model["threads"]}


def _yasa(spec: dict[str, Any]) -> tuple[Callable[[], Any], dict[str, Any]]:
    import mne
    import yasa

    names = spec["channels"]

    def once():
        raw = mne.io.read_raw_edf(spec["psg"], include=list(names.values()), preload=True, verbose="error")
        staging = yasa.SleepStaging(raw, eeg_name=names["eeg"], eog_name=names.get("eog"),
                                    emg_name=names.get("emg"))
        return staging.predict()

    return once, {"yasa": yasa.__version__, "lightgbm": metadata.version("lightgbm")}


def _epochs(result: Any) -> int:
    return int(getattr(result, "n_epochs", None) or len(result))


def main(argv: list[str]) -> int:
    """Run the contestant ``argv[0]`` describes and print its timings as one JSON line."""
    spec = json.loads(argv[0])
    once, facts = {"somnray": _somnray, "serve": _serve, "yasa": _yasa}[spec["kind"]](spec)
    epochs = _epochs(once())  # warm-up, untimed
    times = []
    for _ in range(int(spec["repeats"])):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    print(json.dumps({"times": times, "epochs": epochs, **facts}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
