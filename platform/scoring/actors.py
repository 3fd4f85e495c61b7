"""Batch scoring on Ray Data: one actor class that holds a :class:`~.scorer.Scorer` per worker.

Evaluation and cohort scoring both fan recordings out as ``map_batches`` over an actor pool.
What differs is what is done with one row (evaluate a prepared recording under scenarios; score
a prepared night and write its outputs), so that is a *task*: a picklable callable
``task(scorer, row) -> row``.  :func:`map_with_scorer` ships the model once through the object
store (:class:`~.scorer.ScorerWeights`), and each :class:`ScoringActor` rebuilds it on its own
device and precision, then runs the task on every row it is sent::

    ds = map_with_scorer(ds, scorer, task, actors=4, device="auto", precision="auto")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .device import Device, Precision
from .scorer import DEFAULT_BATCH_SIZE, Scorer

if TYPE_CHECKING:
    import ray.data

#: What an actor does with one row: ``task(scorer, row) -> output row``.  Rows of one run must
#: all have the same columns (Ray Data builds blocks from them).
ScoringTask = Callable[[Scorer, dict[str, Any]], dict[str, Any]]


class ScoringActor:
    """Ray Data ``map_batches`` callable: builds the scorer once, then runs ``task`` per row.

    Parameters
    ----------
    weights : ray.ObjectRef or ScorerWeights
        The model's :class:`~.scorer.ScorerWeights` (a reference is fetched).
    task : callable
        ``task(scorer, row) -> row``; each actor holds its own copy (and so its own state).
    device, precision : str
        Resolved on the actor's node (:mod:`.device`).
    batch_size : int
        Windows per forward pass.
    threads : int, optional
        torch intra-op threads of this actor (default: what Ray gives it).
    """

    def __init__(self, weights: Any, task: ScoringTask, *, device: Device | str = "auto",
                 precision: Precision | str = "auto", batch_size: int = DEFAULT_BATCH_SIZE,
                 threads: int | None = None):
        import ray
        import torch

        if threads:
            torch.set_num_threads(threads)
        if isinstance(weights, ray.ObjectRef):  # Ray Data does not resolve nested references
            weights = ray.get(weights)
        self.scorer = Scorer.from_weights(weights, device=device, precision=precision,
                                          batch_size=batch_size)
        self.task = task

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
        """Run the task on each row of ``batch``; the output rows as columns."""
        n = len(next(iter(batch.values()))) if batch else 0
        rows = [self.task(self.scorer, {k: batch[k][i] for k in batch}) for i in range(n)]
        return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


def map_with_scorer(ds: "ray.data.Dataset", scorer: Scorer, task: ScoringTask, *, actors: int,
                    device: Device | str = "auto", precision: Precision | str = "auto",
                    threads: int | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0
                    ) -> "ray.data.Dataset":
    """``ds`` mapped row by row through ``task`` on a pool of ``actors`` :class:`ScoringActor`.

    Parameters
    ----------
    ds : ray.data.Dataset
        One row per recording.
    scorer : Scorer
        Its weights and batch size are what the actors score with; ``device`` and ``precision``
        are chosen again on each actor.
    task : callable
        ``task(scorer, row) -> row`` (:data:`ScoringTask`), picklable.
    actors : int
        Pool size.
    threads : int, optional
        torch threads per actor.
    num_cpus, num_gpus : float
        Resources each actor reserves.
    """
    import ray

    weights = ray.put(scorer.weights())
    return ds.map_batches(
        ScoringActor,
        fn_constructor_args=(weights, task),
        fn_constructor_kwargs={"device": device, "precision": precision,
                               "batch_size": scorer.batch_size, "threads": threads},
        batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=num_cpus, num_gpus=num_gpus)


__all__ = ["ScoringActor", "ScoringTask", "map_with_scorer"]
