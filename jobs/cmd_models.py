"""``somnray models``: the model registry (MLflow) — register bundles, list, show, set aliases.

Examples::

    export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
    somnray models register runs/coresleep-shhs --name coresleep-shhs
    somnray models register runs:/<mlflow run id>/model --name coresleep-shhs
    somnray models alias coresleep-shhs 3 champion
    somnray models list
    somnray models show coresleep-shhs
    somnray models show models:/coresleep-shhs@champion
    somnray score models:/coresleep-shhs@champion night.edf --out scored/

``register`` uploads the whole bundle folder of a training run or bundle (``model.pt``,
``model.json`` and its model card when there is one) and creates a new version of NAME holding
it; a bundle a training run logged to the same server (``runs:/RUN_ID/model``) is registered
where it is. Every command that takes a model (score, evaluate, serve, cohort jobs) accepts
``models:/NAME/VERSION`` and ``models:/NAME@ALIAS``; versions are downloaded once into
``SOMNRAY_MODEL_CACHE`` (default ``~/.cache/somnray/models``).

The server is ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``. MLflow is an optional extra:
``pip install 'somnray[mlflow]'``. Exit status: 0 done, 1 MLflow missing, no server, an unknown
model or version, or not a bundle.
"""

from __future__ import annotations

import argparse
import json

#: One line for ``somnray --help``.
HELP = "model registry (MLflow): register bundles, list, show, alias"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray models``."""
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking server (default: MLFLOW_TRACKING_URI)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    reg = sub.add_parser("register", help="register a run's bundle as a new model version")
    reg.add_argument("bundle", metavar="RUN_URI",
                     help="training run or bundle folder (path or URI), or runs:/RUN_ID/PATH")
    reg.add_argument("--name", required=True, help="registered model name")
    reg.add_argument("--description", default=None, help="description of the new version")
    sub.add_parser("list", help="registered models, their latest version and aliases")
    show = sub.add_parser("show", help="every version of a model, or one version (models:/...)")
    show.add_argument("model", metavar="NAME|MODEL_URI")
    alias = sub.add_parser("alias", help="point models:/NAME@ALIAS at a version")
    alias.add_argument("name", metavar="NAME")
    alias.add_argument("version", metavar="VERSION")
    alias.add_argument("alias", metavar="ALIAS")
    for command in (show, sub.choices["list"]):
        command.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _version_line(v) -> str:
    aliases = f"  @{', @'.join(v.aliases)}" if v.aliases else ""
    sha = v.tags.get("weights_sha256", "")[:12] or "?"
    return f"{v.uri}  {v.tags.get('architecture', '?')}  weights {sha}{aliases}"


def _version_doc(v) -> dict:
    return {"name": v.name, "version": v.version, "uri": v.uri, "aliases": list(v.aliases),
            "source": v.source, "run_id": v.run_id, "tags": v.tags, "description": v.description}


def run(args: argparse.Namespace) -> int:
    """Carry out the action; returns 0."""
    from somnray.scoring.bundles import register_bundle
    from somnray.scoring.registry import Registry, is_registry_uri

    registry = Registry(args.tracking_uri)
    if args.action == "register":
        version = register_bundle(args.bundle, args.name, registry=registry, description=args.description)
        print(f"registered {version.uri} ({version.tags.get('architecture')}, "
              f"weights {version.tags.get('weights_sha256', '')[:12]}; files {version.tags.get('files')})")
        print(version.uri)
    elif args.action == "alias":
        version = registry.set_alias(args.name, args.version, args.alias)
        print(f"models:/{args.name}@{args.alias} -> {version.uri}")
    elif args.action == "list":
        models = registry.models()
        if args.json:
            print(json.dumps(models, indent=2))
        else:
            for m in models:
                aliases = "".join(f"  @{a}={v}" for a, v in m["aliases"].items())
                print(f"{m['name']}  latest {m['latest'] or '-'}{aliases}")
    else:
        versions = ([registry.version(args.model)] if is_registry_uri(args.model)
                    else registry.versions(args.model))
        if args.json:
            print(json.dumps([_version_doc(v) for v in versions], indent=2))
        else:
            for v in versions:
                print(_version_line(v))
    return 0
