"""Every manifest under ``infra/`` parses, has the fields its kind needs, and every ``somnray …``
command it runs is accepted by the real CLI parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from somnray.jobs.cli import COMMAND_MODULES, build_parser

INFRA = Path(__file__).resolve().parents[2] / "infra"
MANIFESTS = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayService")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _kuberay(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in MANIFESTS for d in _docs(p)
            if isinstance(d, dict) and d.get("apiVersion") == "ray.io/v1" and d.get("kind") == kind]


def _somnray_commands() -> list[tuple[str, str]]:
    """(where, command) of every somnray command the manifests run."""
    found = [(f"{p.name}:{d['metadata']['name']}", " ".join(d["spec"]["entrypoint"].split()))
             for p, d in _kuberay("RayJob")]
    launcher = _docs(INFRA / "cluster-launcher" / "aws.yaml")[0]
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        found += [(f"aws.yaml:{key}", c) for c in launcher.get(key, []) if c.split()[0] == "somnray"]
    return found


def test_every_manifest_parses():
    """Each YAML under infra/ (multi-document aware) parses to at least one mapping."""
    assert {p.name for p in MANIFESTS} >= {"raycluster.yaml", "rayjob-prepare.yaml", "rayjob-train.yaml",
                                           "rayjob-tune.yaml", "rayjob-score.yaml", "rayservice.yaml",
                                           "aws.yaml", "docker-compose.yaml"}
    for path in MANIFESTS:
        docs = _docs(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


@pytest.mark.parametrize("kind", KUBERAY_KINDS)
def test_kuberay_resources_have_required_fields(kind):
    """RayCluster/RayJob/RayService specs carry what KubeRay's ray.io/v1 CRDs require."""
    resources = _kuberay(kind)
    assert resources, f"no {kind} manifest under infra/"
    for path, doc in resources:
        where = f"{path.name}:{doc.get('metadata', {}).get('name')}"
        assert doc["metadata"]["name"], where
        spec = doc["spec"]
        if kind == "RayJob":
            assert spec["entrypoint"].strip(), where
            # Either its own cluster or an existing one, never both.
            assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), where
            cluster = spec.get("rayClusterSpec")
        elif kind == "RayService":
            assert spec["serveConfigV2"], where
            cluster = spec["rayClusterConfig"]
        else:
            cluster = spec
        if cluster is not None:
            _check_cluster(cluster, where)


def _check_cluster(cluster: dict, where: str) -> None:
    assert cluster["rayVersion"] == ray.__version__, f"{where}: rayVersion must match the client's Ray"
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), where
    assert head["template"]["spec"]["containers"][0]["image"], where
    groups = cluster["workerGroupSpecs"]
    assert groups, where
    for group in groups:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict), where
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
        container = group["template"]["spec"]["containers"][0]
        limits = container["resources"]["limits"]
        assert str(limits.get("nvidia.com/gpu")) == group["rayStartParams"].get("num-gpus"), \
            f"{where}: a GPU worker's Kubernetes limit and Ray's num-gpus must agree"
        env = {e["name"] for e in container.get("env", [])}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"} <= env, where


def test_s3_credentials_come_from_secrets():
    """No manifest inlines an S3 key: they are secretKeyRef env entries."""
    for path in (INFRA / "kuberay").glob("*.yaml"):
        text = path.read_text()
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            for m in re.finditer(rf"name: {name}\n\s+(\w+):", text):
                assert m.group(1) == "valueFrom", f"{path.name}: {name} must come from a Secret"


def test_every_workflow_has_a_rayjob():
    """prepare, train, tune and score each have a RayJob running that somnray command."""
    commands = {shlex.split(c)[1] for _, c in _somnray_commands() if shlex.split(c)[0] == "somnray"}
    assert commands >= {"prepare", "train", "tune", "score"}


@pytest.mark.parametrize("where,command", _somnray_commands(), ids=lambda v: str(v)[:40])
def test_somnray_commands_parse_with_the_real_cli(where, command):
    """Each manifest's somnray command names a registered sub-command and parses with its parser."""
    argv = shlex.split(command)
    assert argv[0] == "somnray", where
    if len(argv) > 1 and argv[1] not in COMMAND_MODULES and not argv[1].startswith("-"):
        pytest.fail(f"{where}: `somnray {argv[1]}` is not registered in somnray.jobs.cli.COMMAND_MODULES "
                    f"(jobs/cmd_{argv[1]}.py missing or not added) — the manifest cannot run yet")
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        if exc.code:
            pytest.fail(f"{where}: the somnray CLI rejects {command!r} (exit {exc.code})")


def test_configmap_configs_validate(tmp_path):
    """Experiment configs and search spaces shipped in ConfigMaps pass somnray's own validation."""
    from somnray.train.config import load_experiment
    from somnray.tune.space import load_space

    checked = 0
    for path in MANIFESTS:
        for doc in _docs(path):
            if doc.get("kind") != "ConfigMap" or "experiment.yaml" not in doc.get("data", {}):
                continue
            folder = tmp_path / doc["metadata"]["name"]
            folder.mkdir()
            for name, text in doc["data"].items():
                (folder / name).write_text(text)
            cfg = load_experiment(folder / "experiment.yaml")
            checked += 1
            if (folder / "space.yaml").exists():
                assert load_space(folder / "space.yaml", cfg).params
    assert checked >= 2


def test_rayservice_builds_the_scoring_app_with_valid_args():
    """serveConfigV2 imports somnray.serve.app:app_builder with args ServeConfig accepts."""
    from somnray.serve import app as serve_app
    from somnray.serve.config import ServeConfig

    (path, service), = _kuberay("RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (application,) = serve_config["applications"]
    module, _, attr = application["import_path"].partition(":")
    assert module == "somnray.serve.app" and callable(getattr(serve_app, attr))
    cfg = ServeConfig.from_mapping(application["args"], source=str(path))
    assert cfg.run_uri.startswith("s3://")


def test_dockerfile_installs_somnray_and_deepspeed_as_non_root():
    """The image pins Ray to the client's version, installs DeepSpeed without building ops and the
    somnray wheel, and does not run as root."""
    text = (INFRA / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-" in text
    assert re.search(r"DS_BUILD_OPS=0 pip install [^\n]*deepspeed", text)
    assert re.search(r"pip install [^\n]*somnray-\*\.whl", text)
    assert re.search(r"pip wheel --no-deps", text)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")


def test_cluster_launcher_has_gpu_workers_and_installs_the_wheel():
    """The AWS launcher config has a head, a GPU worker type, and installs somnray from a wheel."""
    cfg = _docs(INFRA / "cluster-launcher" / "aws.yaml")[0]
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in types.values())
    assert any(".whl" in c for c in cfg["setup_commands"])
    assert cfg["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
