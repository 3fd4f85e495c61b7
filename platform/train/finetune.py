"""Fine-tuning: a phase that starts from another trained model (``init_from: <URI>``).

The source is a training run (its ``model/`` bundle) or a bundle folder, local or remote.
:func:`resolve_source` is the one place a source URI becomes a bundle folder, so another kind of
source (a registered model version) only needs to be recognised there.

Before any phase runs, :func:`check_source` loads the source and checks it against the phase:

* the phase builds the same architecture (``model.name``) and the source's weights fit it;
* modalities: a modality the phase would read that the source never saw in training is an
  error naming it (its branch was never trained); a modality the source saw that the new data
  lack is allowed and said so (the model is fine-tuned, and later scores, without it, as its
  missing-modality policy allows).

The workers then load the source's ``model.pt`` exactly as they load the previous phase's best
checkpoint; ``init_statistics`` (``keep`` / ``refit``) and ``freeze`` / ``optim.group_lr`` apply
as for any phase. :func:`finetune_overrides` turns ``somnray finetune SOURCE --data DATASET`` into
``--set`` assignments on a recipe (``jobs/configs/finetune_*.yaml``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from somnray.core.errors import ConfigError
from somnray.core.storage import StorageLocation
from somnray.models.bundle import INFO_FILE, BundleInfo, load_bundle
from somnray.scoring.bundles import bundle_location, local_bundle

from .config import PhaseConfig

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
    location : StorageLocation
        Its bundle folder.
    info : BundleInfo
        The bundle's ``model.json``.
    """

    uri: str
    location: StorageLocation
    info: BundleInfo

    @property
    def seen_modalities(self) -> tuple[str, ...]:
        """Modalities the source was trained with present: those with training-signal statistics,
        else the ones its training read (``extra.data_modalities``), else all of the model's."""
        if self.info.data_summary:
            return tuple(m for m in self.info.modalities if m in self.info.data_summary)
        return tuple(self.info.extra.get("data_modalities") or self.info.modalities)

    def checkpoint(self):
        """The bundle folder as a ``ray.train.Checkpoint`` (its ``model.pt`` is what workers load)."""
        from ray.train import Checkpoint

        return Checkpoint(self.location.path, filesystem=self.location.pyarrow_filesystem())


def is_source_uri(init_from: str | None) -> bool:
    """Whether ``init_from`` names another trained model (not None, not ``previous``)."""
    return init_from is not None and init_from != PREVIOUS


def resolve_source(uri: str, storage_options: Mapping[str, Any] | None = None) -> StorageLocation:
    """The bundle folder behind a source URI (a run or a bundle folder, local or remote).

    Raises
    ------
    ConfigError
        Nothing at the URI is a model bundle.
    """
    return bundle_location(uri, storage_options)


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
    location = resolve_source(uri, storage_options)
    with local_bundle(location) as folder:
        try:
            source_model, info = load_bundle(folder)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(where, [str(exc)]) from None
    if info.model != phase.model.name:
        raise ConfigError(where, [f"the source is a {info.model!r} model; this phase builds {phase.model.name!r} "
                                  f"(set model.name={info.model})"])
    try:
        create_model(phase.model.name, **phase.model.overrides).load_state_dict(source_model.state_dict())
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ConfigError(where, [f"the source's weights do not fit model.overrides {dict(phase.model.overrides)} "
                                  f"(the source was built with {info.overrides}): {first}"]) from None
    source = SourceModel(uri, location, info)
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
    location = resolve_source(source_uri, storage_options)
    info_loc = location.join(INFO_FILE)
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
