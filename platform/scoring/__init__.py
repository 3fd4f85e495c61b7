"""Scoring: a trained model turned into per-epoch probabilities, the same way everywhere.

Evaluation (``somnray evaluate``), cohort scoring (``somnray score``, the Serve app's cohort jobs)
and the Serve app's model deployment all score through this package:

=====================  ===============================================================
:mod:`.device`         the device and precision policy of scoring (``auto`` and friends)
:mod:`.bundles`        where a run's or a bundle folder's model bundle is, local or remote
:mod:`.scorer`         :class:`~.scorer.Scorer`: a bundle loaded once, nights → probabilities
:mod:`.actors`         the Ray Data actor that holds a :class:`~.scorer.Scorer` per worker
:mod:`.domain`         is a night like the model's training data? (the domain-shift check)
=====================  ===============================================================

It depends on :mod:`somnray.core`, :mod:`somnray.models` and torch (Ray for the actors), and
:mod:`.domain` on :mod:`somnray.data`'s signal summaries — never on :mod:`somnray.train` or
:mod:`somnray.serve`, which call it.
"""
