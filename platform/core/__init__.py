"""somnray's floor: what every other package needs and nothing of theirs.

=====================  ===============================================================
:mod:`.errors`         the error hierarchy (one root, :class:`~.errors.SomnrayError`)
:mod:`.storage`        URIs, fsspec and pyarrow filesystems, atomic writes
:mod:`.session`        the one way to connect to Ray (loopback by default)
:mod:`.constants`      the scoring epoch, sampling rate, stages, modalities, statuses, shared env vars
:mod:`.config`         YAML reading, pydantic error lines, did-you-mean suggestions
:mod:`.version`        the installed somnray version
=====================  ===============================================================

Imports point down only: ``somnray.core`` imports no other somnray package.
"""
