"""A trained model loaded once, turning nights (or batches of windows) into per-epoch probabilities.

:class:`Scorer` is what every scoring path holds: evaluation (per scenario), cohort scoring and
the Serve app.  It carries the module (eval mode, on its device), the bundle's
:class:`~somnray.models.bundle.BundleInfo`, the autocast dtype of the precision policy
(:mod:`.device`) and the windows per forward pass, and it predicts with
:func:`somnray.models.inference.predict_night`, so a night gets the same probabilities whichever
path scores it.  It is also the one place a bundle's fitted temperature is applied
(:meth:`Scorer.calibrate`, :mod:`.calibration`): every path gets calibrated probabilities.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation
from somnray.models.base import SleepStagingModel
from somnray.models.bundle import BundleInfo, load_bundle
from somnray.models.inference import average_windows, predict_night, window_probabilities

from .bundles import local_bundle, resolve_bundle, weights_sha256
from .calibration import Calibration, apply_temperature
from .device import (
    Device,
    Precision,
    cpu_has_native_bf16,
    faster_autocast,
    precision_name,
    scoring_autocast,
    scoring_device,
)

log = logging.getLogger(__name__)

#: ``auto`` precision decided per model shape and thread count, so a process that loads the same
#: model again (a Serve replica restarting, one actor per night batch) times it once.
_MEASURED_AUTOCAST: dict[tuple[str, str, int, int], torch.dtype | None] = {}

#: Windows per forward pass: large enough to amortise per-call overhead, small enough that a
#: 24-hour night (2,880 epochs) never holds more than a few hundred MB of activations.
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class ScorerWeights:
    """A scorer's model as plain data (``model.json`` text, CPU ``state_dict``, bundle URI, lineage).

    What travels through Ray's object store to the actors (:mod:`.actors`); rebuilt with
    :meth:`Scorer.from_weights`, so no pickled module crosses the cluster.
    """

    info_json: str
    state: dict[str, torch.Tensor]
    uri: str | None = None
    weights_sha256: str | None = None
    registered: dict[str, str] | None = None


@dataclass
class Scorer:
    """A trained model and how to run it.  Build with :meth:`load` (or :meth:`from_model`).

    Attributes
    ----------
    model : SleepStagingModel
        In eval mode, on ``device``.
    info : BundleInfo
        The bundle's ``model.json``.
    uri : str or None
        The bundle folder's URI, or ``models:/NAME/VERSION`` for a registered model (what outputs
        record as the checkpoint); None for a model that came from memory.
    device : torch.device
    autocast_dtype : torch.dtype or None
        None: plain fp32.
    batch_size : int
        Windows per forward pass.
    weights_sha256 : str or None
        Hex SHA-256 of the bundle's ``model.pt`` (None for a model that came from memory).
    registered : dict or None
        ``name``, ``version`` and ``uri`` of the registered model version it was loaded from.
    """

    model: SleepStagingModel
    info: BundleInfo
    uri: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    weights_sha256: str | None = None
    registered: dict[str, str] | None = None

    # -- what it is ------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Window length ``L``: the sequence length the model was trained with."""
        return int(self.info.sequence_length)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The model's modalities, in the column order of ``present``."""
        return tuple(self.model.modalities)

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: the arithmetic scoring runs in."""
        return precision_name(self.autocast_dtype)

    @property
    def calibration(self) -> Calibration:
        """The bundle's calibration (temperature, flag threshold); unfitted for older bundles."""
        return Calibration.from_dict(self.info.calibration)

    # -- building one ----------------------------------------------------------------------------
    @classmethod
    def load(cls, run_or_bundle_uri: str | os.PathLike[str] | StorageLocation, *,
             device: Device | str = "auto", precision: Precision | str = "auto",
             batch_size: int = DEFAULT_BATCH_SIZE,
             storage_options: Mapping[str, Any] | None = None) -> "Scorer":
        """Load the bundle of a training run (``<run>/model/``), a bundle folder or a registered model.

        Parameters
        ----------
        run_or_bundle_uri : str, path or StorageLocation
            Local path, ``file://`` or remote URI, or ``models:/NAME/VERSION`` /
            ``models:/NAME@ALIAS`` (:func:`~.bundles.resolve_bundle`); remote bundles are
            downloaded to a temporary folder and removed once loaded, registered ones are cached.
        device : {"auto", "cpu", "cuda"} or str
            ``"auto"``: CUDA when available, else CPU (:func:`~.device.scoring_device`).
        precision : {"auto", "fp32", "bf16", "fp16"}
            ``"auto"``: bf16 autocast on bf16-capable GPUs, and on CPUs with native bf16 when a
            timed probe shows it clearly faster (:func:`~.device.faster_autocast`); fp32 elsewhere.
        batch_size : int
            Windows per forward pass.
        storage_options : mapping, optional
            fsspec options of a remote URI.

        Raises
        ------
        ConfigError
            No bundle at the URI, a malformed bundle, a bad device, precision or batch size.
        RegistryError
            A ``models:/`` URI that cannot be resolved (or MLflow is not installed).
        """
        resolved = resolve_bundle(run_or_bundle_uri, storage_options)
        loc = resolved.location
        with local_bundle(loc) as folder:
            try:
                model, info = load_bundle(folder, map_location="cpu")
            except (ValueError, FileNotFoundError) as exc:
                raise ConfigError(loc.uri, [str(exc)]) from exc
            # load_bundle has checked the weights against the hash model.json records; older
            # bundles record none, so theirs is computed here.
            digest = info.weights_sha256 or weights_sha256(folder)
        # The bundle's own folder, not <run> (nor a registered version's local cache): it is what
        # every output records as the checkpoint.
        registered = resolved.registered.lineage() if resolved.registered is not None else None
        uri = registered["uri"] if registered else loc.uri.rstrip("/")
        scorer = cls.from_model(model, info, uri=uri, device=device, precision=precision,
                                batch_size=batch_size, weights_sha256=digest, registered=registered)
        log.info("loaded %s from %s on %s (%s)", info.model, scorer.uri, scorer.device, scorer.precision)
        return scorer

    @classmethod
    def from_model(cls, model: SleepStagingModel, info: BundleInfo, *, uri: str | None = None,
                   device: Device | str = "auto", precision: Precision | str = "auto",
                   batch_size: int = DEFAULT_BATCH_SIZE, weights_sha256: str | None = None,
                   registered: Mapping[str, str] | None = None) -> "Scorer":
        """A scorer of a model already in memory (moved to ``device``, put in eval mode).

        ``weights_sha256`` and ``registered`` are the lineage of a model that came from a bundle
        (:meth:`load` sets them).

        Raises
        ------
        ConfigError
            A bad device, precision or batch size.
        """
        if batch_size < 1:
            raise ConfigError("batch_size", [f"batch_size must be >= 1, got {batch_size}"])
        dev = scoring_device(device)
        autocast = scoring_autocast(dev, precision)
        scorer = cls(model=model.to(dev).eval(), info=info, uri=uri, device=dev, autocast_dtype=autocast,
                     batch_size=batch_size, weights_sha256=weights_sha256,
                     registered=dict(registered) if registered else None)
        if precision == "auto" and dev.type == "cpu" and cpu_has_native_bf16():
            scorer.autocast_dtype = scorer._measured_cpu_autocast()
        return scorer

    def _measured_cpu_autocast(self) -> torch.dtype | None:
        """bf16 when one window of this model runs clearly faster in bf16 than in fp32 here."""
        key = (self.info.model, repr(sorted(self.info.overrides.items())), self.length, torch.get_num_threads())
        if key not in _MEASURED_AUTOCAST:
            generator = torch.Generator().manual_seed(0)
            signals = {m: torch.randn(1, self.length, 3000, generator=generator) for m in self.modalities}
            present = torch.ones(1, self.length, len(self.modalities), dtype=torch.bool)

            def one_window(dtype: torch.dtype | None) -> None:
                with torch.inference_mode():
                    window_probabilities(self.model, signals, present, autocast_dtype=dtype)

            _MEASURED_AUTOCAST[key] = faster_autocast(one_window)
            log.info("precision auto: %s is faster for %s on this CPU",
                     precision_name(_MEASURED_AUTOCAST[key]), self.info.model)
        return _MEASURED_AUTOCAST[key]

    def weights(self) -> ScorerWeights:
        """The model as plain data, for :meth:`from_weights` elsewhere (a Ray actor)."""
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return ScorerWeights(self.info.to_json(), state, self.uri, self.weights_sha256, self.registered)

    @classmethod
    def from_weights(cls, weights: ScorerWeights, *, device: Device | str = "auto",
                     precision: Precision | str = "auto", batch_size: int = DEFAULT_BATCH_SIZE
                     ) -> "Scorer":
        """Rebuild a scorer from :meth:`weights`, on this process's ``device``."""
        from somnray.models import create_model

        info = BundleInfo.from_json(weights.info_json)
        model = create_model(info.model, **info.overrides)
        model.load_state_dict(weights.state)
        return cls.from_model(model, info, uri=weights.uri, device=device, precision=precision,
                              batch_size=batch_size, weights_sha256=weights.weights_sha256,
                              registered=weights.registered)

    # -- scoring ---------------------------------------------------------------------------------
    def check_stride(self, stride: int | None, source: str = "stride") -> None:
        """Refuse a window stride outside ``[1, L]`` (None, the default, is ``L``).

        Raises
        ------
        ConfigError
            Named ``source`` (the option the stride came from).
        """
        if stride is not None and not 1 <= stride <= self.length:
            raise ConfigError(source, [f"stride must be in [1, {self.length}] (the model's window "
                                       f"length), got {stride}"])

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """Per-epoch probabilities ``(n, 5)`` with the bundle's temperature applied.

        ``softmax(log p / T)`` (:func:`~.calibration.apply_temperature`); unchanged when the bundle
        has no fitted temperature.  The argmax never changes.
        """
        return apply_temperature(probabilities, self.calibration.temperature)

    def predict(self, signals: Mapping[str, np.ndarray], present: np.ndarray, *,
                stride: int | None = None, calibrated: bool = True) -> np.ndarray:
        """Per-epoch probabilities ``(n, 5)`` of one night, calibrated (:meth:`calibrate`).

        Parameters
        ----------
        signals : mapping of str to ndarray
            ``(n, 3000)`` per modality the night has; a modality left out is absent, and the
            model drops or imputes it as its family does.
        present : ndarray
            ``(n, M)`` bool, columns in :attr:`modalities` order.
        stride : int, optional
            Window stride in epochs (default: the window length; 1 averages every position).
        calibrated : bool
            False: the model's own softmax averaged over windows, without the temperature (what
            calibration is fitted and measured on).

        Raises
        ------
        ConfigError
            The stride is outside ``[1, L]``.
        """
        self.check_stride(stride)
        probs = predict_night(self.model, signals, present, length=self.length, stride=stride,
                              batch_size=self.batch_size, device=self.device,
                              autocast_dtype=self.autocast_dtype)
        return self.calibrate(probs) if calibrated else probs

    def night_probabilities(self, n_epochs: int, windows: Iterable[tuple[np.ndarray, np.ndarray]]
                            ) -> np.ndarray:
        """Calibrated per-epoch probabilities ``(n, 5)`` of a night from :meth:`predict_windows` results.

        For callers that batch windows themselves (the Serve app): each epoch's probabilities are
        averaged over the windows covering it (:func:`~somnray.models.inference.average_windows`,
        as :meth:`predict` does), then calibrated.  ``windows`` yields ``(idx, probs)``: ``(W, L)``
        epoch indices and their ``(W, L, 5)`` probabilities.
        """
        return self.calibrate(average_windows(n_epochs, windows))

    def predict_windows(self, signals: Mapping[str, np.ndarray], present: np.ndarray) -> np.ndarray:
        """Uncalibrated probabilities ``(W, L, 5)`` (float32) of a batch of windows, in one forward pass.

        For callers that cut and batch windows themselves (the Serve app gathers windows of
        concurrent requests); ``signals[m]`` is ``(W, L, 3000)`` and ``present`` ``(W, L, M)``.
        The night's probabilities are :meth:`night_probabilities` of these (the temperature
        applies to the window average, as in :meth:`predict`).
        """
        sig = {m: torch.from_numpy(np.asarray(x, dtype=np.float32)).to(self.device) for m, x in signals.items()}
        mask = torch.from_numpy(np.asarray(present, dtype=bool)).to(self.device)
        probs = window_probabilities(self.model, sig, mask, autocast_dtype=self.autocast_dtype)
        return probs.cpu().numpy()


__all__ = ["DEFAULT_BATCH_SIZE", "Scorer", "ScorerWeights"]
