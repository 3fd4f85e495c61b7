"""The model registry against a real MLflow server: register, list, show, alias, resolve, score."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
from registry_factory import BUNDLE_LENGTH, make_bundle_run  # tests/registry is on sys.path

from somnray.jobs.cli import main
from somnray.scoring.bundles import resolve_bundle, weights_sha256
from somnray.scoring.registry import INSTALL_HINT, Registry, RegistryError, parse_registry_uri
from somnray.scoring.scorer import Scorer


# -- without a server ----------------------------------------------------------------------------
def test_models_without_mlflow_says_how_to_install(tmp_path, monkeypatch, capsys):
    """Without MLflow, `somnray models` exits 1 with one line naming the extra; bundles still load."""
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    assert main(["models", "list"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"somnray models: error: {INSTALL_HINT}\n"
    assert INSTALL_HINT == ("the model registry needs MLflow, which is not installed: "
                            "pip install 'somnray[mlflow]'")
    run = make_bundle_run(tmp_path / "run")
    scorer = Scorer.load(str(run), device="cpu", precision="fp32")
    assert scorer.registered is None and scorer.uri.endswith(f"{run}/model")
    assert scorer.weights_sha256 == weights_sha256(run / "model")


def test_registry_uri_forms():
    """models:/NAME/VERSION and models:/NAME@ALIAS parse; anything else is refused with both forms."""
    assert parse_registry_uri("models:/sleep/3") == ("sleep", "3", None)
    assert parse_registry_uri("models:/sleep@champion") == ("sleep", None, "champion")
    for bad in ("models:/sleep", "models:/sleep/latest", "models:/@x"):
        with pytest.raises(RegistryError) as err:
            parse_registry_uri(bad)
        assert str(err.value) == (f"{bad!r} is not a registered model URI: use models:/NAME/VERSION "
                                  "(a version number) or models:/NAME@ALIAS")


def test_no_server_configured_is_one_line(monkeypatch, capsys):
    """With MLflow installed but no server named, `somnray models list` says which variable to set."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["models", "list"]) == 1
    assert capsys.readouterr().err == (
        "somnray models: error: no model registry configured: set MLFLOW_TRACKING_URI to the MLflow "
        "server (e.g. http://127.0.0.1:5000) or pass --tracking-uri\n")


# -- on the server -------------------------------------------------------------------------------
@pytest.mark.integration
def test_register_alias_list_show_and_resolve(registry_env, s3_server, tmp_path, capsys):
    """A registered bundle (with its card) lands in the S3 artifact store, and models:/ URIs load it."""
    name = f"tiny-{tmp_path.name[-8:]}"
    first, second = make_bundle_run(tmp_path / "r1", seed=1), make_bundle_run(tmp_path / "r2", seed=2, card=False)

    assert main(["models", "register", str(first), "--name", name]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"models:/{name}/1"
    assert main(["models", "register", str(second / "model"), "--name", name, "--description", "seed 2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"models:/{name}/2"
    assert main(["models", "alias", name, "1", "champion"]) == 0
    assert capsys.readouterr().out == f"models:/{name}@champion -> models:/{name}/1\n"

    assert main(["models", "list", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed[name] == {"name": name, "latest": "2", "aliases": {"champion": "1"}}
    assert main(["models", "show", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    sha1, sha2 = weights_sha256(first / "model"), weights_sha256(second / "model")
    assert lines == [f"models:/{name}/2  coresleep_tiny  weights {sha2[:12]}",
                     f"models:/{name}/1  coresleep_tiny  weights {sha1[:12]}  @champion"]

    # The bytes are in the S3-compatible artifact store, card included.
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True)
    stored = {p.rsplit("/", 1)[-1] for p in fs.find(registry_env.artifacts.removeprefix("s3://"))}
    assert {"model.pt", "model.json", "MODEL_CARD.md"} <= stored

    champion = Scorer.load(f"models:/{name}@champion", device="cpu", precision="fp32")
    assert champion.uri == f"models:/{name}/1"
    assert champion.registered == {"name": name, "version": "1", "uri": f"models:/{name}/1"}
    assert champion.weights_sha256 == sha1 and champion.length == BUNDLE_LENGTH
    cached = resolve_bundle(f"models:/{name}/1").location.path
    assert sorted(p.name for p in (tmp_path / "model-cache").rglob("*") if p.is_file()) == \
        ["MODEL_CARD.md", "model.json", "model.pt"]
    assert cached.startswith(str(tmp_path / "model-cache"))
    assert Scorer.load(f"models:/{name}/2", device="cpu").weights_sha256 == sha2

    with pytest.raises(RegistryError) as err:
        Registry().version(f"models:/{name}/9")
    assert str(err.value).startswith(f"models:/{name}/9: ") and registry_env.uri in str(err.value)


@pytest.mark.integration
def test_score_a_registered_model_records_lineage_and_rescores_on_another(
        registry_env, ray_local, synth_cohort, tmp_path, capsys):
    """`somnray score models:/…` records the version, weights and input hashes; another version re-scores."""
    name = f"scored-{tmp_path.name[-8:]}"
    for seed, run in ((1, "r1"), (2, "r2")):
        assert main(["models", "register", str(make_bundle_run(tmp_path / run, seed=seed)), "--name", name]) == 0
    assert main(["models", "alias", name, "1", "champion"]) == 0
    cohort = synth_cohort("sleep-edf", n_nights=1, hours=1.0, seed=7)
    night = cohort.path / cohort.entries[0].psg
    rid = cohort.entries[0].recording_id
    out = tmp_path / "scored"
    capsys.readouterr()

    assert main(["score", f"models:/{name}@champion", str(night), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / rid / f"{rid}_sleep_stats.json").read_text())
    assert doc["model"]["checkpoint_uri"] == f"models:/{name}/1"
    assert doc["model"]["registered_model"] == {"name": name, "version": "1", "uri": f"models:/{name}/1"}
    assert doc["model"]["weights_sha256"] == weights_sha256(tmp_path / "r1" / "model")
    lineage = doc["lineage"]
    assert lineage["input_sha256"] == hashlib.sha256(night.read_bytes()).hexdigest()
    assert lineage["stride"] == BUNDLE_LENGTH and len(lineage["profile_sha256"]) == 64
    assert lineage["training_dataset"] == {"name": "sleep-edf-0123456789ab", "version": "0123456789ab"}
    assert "re-scored" not in capsys.readouterr().out

    assert main(["score", f"models:/{name}/2", str(night), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("1 recording(s): 1 scored, 0 already scored, 0 rejected")
    assert printed[1] == "  re-scored 1 night(s) whose outputs came from another model"
    doc = json.loads((out / rid / f"{rid}_sleep_stats.json").read_text())
    assert doc["model"]["registered_model"]["version"] == "2"
