"""Fine-tuning: a phase that starts from another trained model (``init_from: <URI>``).

The source is a training run (its ``model/`` bundle), a bundle folder, local or remote, or a
registered model version (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``).
:func:`resolve_source` is the one place a source URI becomes a bundle folder
(:func:`somnray.scoring.bundles.resolve_bundle`: a registered version is downloaded into the local
model cache and checked against the weights' SHA-256 recorded at registration).

Before any phase runs, :func:`check_source` loads the source and checks it against the phase:

* the phase builds the same architecture (``model.name``) and the source's weights fit it;
* modalities: a modality the phase would read that the source never saw in training is an
  error naming it (its branch was never trained); a modality the source saw that the new data
  lack is allowed and said so (the model is fine-tuned, and later scores, without it, as its
  missing-modality policy allows).

The workers do not read the source's folder: the driver loaded its weights (``check_source``) and
:meth:`SourceModel.init_weights` hands them to the workers through Ray's object store. A
registered version lives in the driver's local model cache and a local bundle path on the driver's
disk, neither of which a worker on another node can read; the registry's own artifact URI is no
better (often ``mlflow-artifacts:/``, served through the tracking server rather than a filesystem
Ray Train can open; otherwise the artifact store's, whose credentials every node would need). A
few MB of weights through the object store reach every node the same way, whatever the source.
``init_statistics`` (``keep`` / ``refit``) and ``freeze`` / ``optim.group_lr`` apply as for any
phase.

Which weights a phase started from is recorded in ``<run>/<phase>/init_source.json``
(:meth:`SourceModel.lineage`: the URI as given, the bundle or registered version it resolved to,
the weights' SHA-256), so an alias that moves later does not rewrite a run's history; the export
copies it into the bundle's ``model.json`` and model card.

:func:`finetune_overrides` turns ``somnray finetune SOURCE --data DATASET`` into ``--set``
assignments on a recipe (``jobs/configs/finetune_*.yaml``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation
from somnray.models.bundle import INFO_FILE, BundleInfo, load_bundle
from somnray.scoring.bundles import ResolvedBundle, local_bundle, resolve_bundle, weights_sha256

from .config import PhaseConfig
from .export import SOURCE_FILE

log = logging.getLogger(__name__)

#: ``init_from`` value that means "the previous phase of this run".
PREVIOUS = "previous"


@dataclass(frozen=True)
class SourceModel:
    """A trained model a phase starts from.

    Attributes
    ----------
    uri : str
        The ``init_from`` value as given.
    resolved : ResolvedBundle
        Its bundle folder (for a registered model: the local cache's copy) and registered version.
    info : BundleInfo
        The bundle's ``model.json``.
    state : dict of str to Tensor
        The source's weights (``model.pt``, statistics buffers included), on the CPU.
    weights_sha256 : str
        Hex SHA-256 of the source's ``model.pt``.
    """

    uri: str
    resolved: ResolvedBundle
    info: BundleInfo
    state: Mapping[str, torch.Tensor]
    weights_sha256: str

    @property
    def location(self) -> StorageLocation:
        """The source's bundle folder."""
        return self.resolved.location

    @property
    def seen_modalities(self) -> tuple[str, ...]:
        """Modalities the source was trained with present: those with training-signal statistics,
        else the ones its training read (``extra.data_modalities``), else all of the model's."""
        if self.info.data_summary:
            return tuple(m for m in self.info.modalities if m in self.info.data_summary)
        return tuple(self.info.extra.get("data_modalities") or self.info.modalities)

    def lineage(self) -> dict[str, Any]:
        """What a run records about the source: keyed like a scored night's ``model`` block.

        ``uri`` as given (``models:/NAME@ALIAS`` stays an alias), ``checkpoint_uri`` the bundle it
        resolved to (``models:/NAME/VERSION`` for a registered model, never the local cache),
        ``registered_model`` (name, version, URI; None for a run or bundle) and ``weights_sha256``.
        """
        registered = self.resolved.registered.lineage() if self.resolved.registered is not None else None
        return {"uri": self.uri, "checkpoint_uri": registered["uri"] if registered else self.location.uri,
                "registered_model": registered, "model": self.info.model, "weights_sha256": self.weights_sha256}

    def init_weights(self, phase_folder: StorageLocation) -> Any:
        """Record the source in ``phase_folder`` and return its weights for the workers.

        ``<phase_folder>/init_source.json`` is written once: a rerun of the phase (which resumes
        from its own checkpoints) keeps the source its weights descend from, even if an alias has
        moved since. Call after ``ray.init``.

        Returns
        -------
        ray.ObjectRef
            The weights in Ray's object store (see the module doc): the loop config's
            ``init_checkpoint``, which every worker fetches wherever it runs.
        """
        import ray

        record = phase_folder.join(SOURCE_FILE)
        if not record.exists():
            if phase_folder.is_local:
                phase_folder.makedirs()
            record.write_text(json.dumps(self.lineage(), indent=2))
        return ray.put(dict(self.state))


def is_source_uri(init_from: str | None) -> bool:
    """Whether ``init_from`` names another trained model (not None, not ``previous``)."""
    return init_from is not None and init_from != PREVIOUS


def resolve_source(uri: str, storage_options: Mapping[str, Any] | None = None) -> ResolvedBundle:
    """The bundle folder behind a source URI (a run, a bundle folder or a registered model version).

    Raises
    ------
    ConfigError
        Nothing at the URI is a model bundle.
    RegistryError
        A ``models:/`` URI without MLflow or a server, or one the registry cannot resolve.
    """
    return resolve_bundle(uri, storage_options)


def check_source(phase: PhaseConfig, dataset_modalities: Sequence[str],
                 storage_options: Mapping[str, Any] | None = None) -> SourceModel:
    """Load the source of ``phase.init_from`` and check it against the phase (see the module doc).

    Parameters
    ----------
    dataset_modalities : sequence of str
        Modality columns of the phase's prepared dataset.

    Raises
    ------
    ConfigError
        Naming the source URI: no bundle there, another architecture, weights that do not fit
        the phase's model, or a modality the source never saw.
    """
    from somnray.models import create_model

    uri = str(phase.init_from)
    where = f"phase {phase.name} init_from {uri}"
    resolved = resolve_source(uri, storage_options)
    with local_bundle(resolved.location) as folder:
        try:
            source_model, info = load_bundle(folder)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(where, [str(exc)]) from None
        digest = weights_sha256(folder)
    if info.model != phase.model.name:
        raise ConfigError(where, [f"the source is a {info.model!r} model; this phase builds {phase.model.name!r} "
                                  f"(set model.name={info.model})"])
    try:
        create_model(phase.model.name, **phase.model.overrides).load_state_dict(source_model.state_dict())
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ConfigError(where, [f"the source's weights do not fit model.overrides {dict(phase.model.overrides)} "
                                  f"(the source was built with {info.overrides}): {first}"]) from None
    source = SourceModel(uri, resolved, info, source_model.state_dict(), digest)
    read = [m for m in phase.modalities(info.modalities) if m in dataset_modalities]
    unseen = [m for m in read if m not in source.seen_modalities]
    if unseen:
        keep = [m for m in read if m in source.seen_modalities]
        raise ConfigError(where, [f"modality {m!r}: the source model never saw it in training (it was trained on "
                                  f"{list(source.seen_modalities)}); leave it out with data.modalities={keep}"
                                  for m in unseen])
    lacking = [m for m in source.seen_modalities if m not in read]
    if lacking:
        log.warning("%s: the source was trained on %s; this phase has no %s, so it fine-tunes (and the model "
                    "will score) without %s, as %s's missing-modality policy allows", where,
                    "+".join(source.seen_modalities), ", ".join(lacking), ", ".join(lacking), info.model)
    return source


def finetune_overrides(source_uri: str, dataset_uri: str, freeze: Sequence[str] | None = None,
                       storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """``--set`` assignments that point a fine-tuning recipe at a source model and a dataset.

    The model section comes from the source's ``model.json`` (name and constructor overrides), so
    does the window length (``data.sequence_length``); ``phases.0.init_from`` is the source and ``data.dataset`` the new data; ``freeze`` (if given)
    replaces the first phase's frozen groups. The caller's own ``--set`` go after these, so they win.

    Raises
    ------
    ConfigError
        Nothing at ``source_uri`` is a model bundle.
    """
    info_loc = resolve_source(source_uri, storage_options).location.join(INFO_FILE)
    try:
        info = BundleInfo.from_json(info_loc.read_text(), info_loc.uri)
    except ValueError as exc:
        raise ConfigError(source_uri, [str(exc)]) from None
    out = [f"model.name={info.model}", f"model.overrides={json.dumps(info.overrides)}",
           f"data.sequence_length={info.sequence_length}", f"phases.0.init_from={source_uri}",
           f"data.dataset={dataset_uri}"]
    if freeze is not None:
        out.append(f"phases.0.freeze={json.dumps(list(freeze))}")
    return out


__all__ = ["PREVIOUS", "SourceModel", "check_source", "finetune_overrides", "is_source_uri", "resolve_source"]
