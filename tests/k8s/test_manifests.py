"""The Kubernetes manifests in k8s/: each overlay renders, validates and passes the checks a cluster would.

Rendering needs ``kubectl`` (with kustomize); schema validation uses ``kubernetes-validate`` (a dev
dependency); the scan needs ``checkov`` on PATH or in ``$CHECKOV`` (it pins boto3 at a version the lock
cannot take, so it lives in its own virtualenv: see k8s/README.md "Checks"). Each test skips, with the
reason, when its tool is missing.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from typer.main import get_command

from cli.main import app
from dataengine.config import apply_overrides
from pipelines.recipes import RECIPES, get_recipe
from trainer.dit.recipes import TRAIN_RECIPES, get_train_recipe

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev-cpu", "prod-gpu")
KUBERNETES_VERSION = "1.32.0"  # the oldest version these manifests promise to work on
RAY_KINDS = {"RayCluster", "RayJob"}  # KubeRay CRDs: kubernetes-validate has no schema for them
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# The checkov checks a change may not fail. The open-source checkov reports no severities, so these are the
# ones that matter for a workload like ours: privilege, root, capabilities, tags, resources, isolation.
REQUIRED_CHECKS = {
    "CKV_K8S_16": "privileged containers",
    "CKV_K8S_17": "host PID",
    "CKV_K8S_18": "host IPC",
    "CKV_K8S_19": "host network",
    "CKV_K8S_20": "allowPrivilegeEscalation",
    "CKV_K8S_22": "read-only root filesystem",
    "CKV_K8S_23": "root containers (admission)",
    "CKV_K8S_28": "NET_RAW capability",
    "CKV_K8S_37": "capabilities not dropped",
    "CKV_K8S_40": "low UID",
    "CKV_K8S_14": "latest or missing image tag",
    "CKV_K8S_10": "CPU requests",
    "CKV_K8S_11": "CPU limits",
    "CKV_K8S_12": "memory requests",
    "CKV_K8S_13": "memory limits",
    "CKV_K8S_31": "seccomp profile",
    "CKV_K8S_38": "service account token mounted",
    "CKV_K8S_8": "liveness probe",
    "CKV_K8S_9": "readiness probe",
    "CKV_K8S_21": "default namespace",
}


# --- rendering ---------------------------------------------------------------------------------------


def render(overlay: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: it renders the kustomize overlays")
    done = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) for every pod template an object holds, the KubeRay ones included."""
    kind, name, spec = obj["kind"], obj["metadata"]["name"], obj.get("spec", {})
    if kind in WORKLOAD_KINDS:
        yield f"{kind}/{name}", spec["template"]["spec"]
    elif kind == "RayCluster":
        yield f"RayCluster/{name}/head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"RayCluster/{name}/{group['groupName']}", group["template"]["spec"]
    elif kind == "RayJob":
        if "submitterPodTemplate" in spec:
            yield f"RayJob/{name}/submitter", spec["submitterPodTemplate"]["spec"]
        if "rayClusterSpec" in spec:
            inline = {"kind": "RayCluster", "metadata": obj["metadata"], "spec": spec["rayClusterSpec"]}
            yield from pod_specs(inline)


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod spec, container) for every container, init containers included."""
    for obj in objects:
        for where, pod in pod_specs(obj):
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                yield f"{where}/{c['name']}", pod, c


# --- schemas -----------------------------------------------------------------------------------------


def test_every_object_validates_strictly(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    _, objects = rendered
    for obj in objects:
        if obj["kind"] in RAY_KINDS:
            continue  # no schema in kubernetes-validate; test_ray_objects_are_complete checks them
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")


def test_ray_objects_are_complete(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    (cluster,) = by_kind(objects, "RayCluster").values()
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert "cpu" in groups
    assert ("gpu" in groups) == (overlay == "prod-gpu")
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        assert isinstance(group["rayStartParams"], dict)
    jobs = by_kind(objects, "RayJob")
    assert {"dataengine-run", "dataengine-train"} <= set(jobs)
    for name, job in jobs.items():
        assert job["apiVersion"] == "ray.io/v1"
        assert job["spec"]["entrypoint"].startswith("dataengine "), name
        has_cluster = "rayClusterSpec" in job["spec"]
        selector = job["spec"].get("clusterSelector", {})
        assert has_cluster or selector.get("ray.io/cluster") == cluster["metadata"]["name"], name


def test_gpu_pods_have_selectors_and_tolerations() -> None:
    objects = render("prod-gpu")
    gpu_pods = [(w, pod) for o in objects for w, pod in pod_specs(o) if _wants_gpu(pod)]
    assert {w for w, _ in gpu_pods} >= {"Deployment/vllm", "RayCluster/dataengine/gpu"}
    for where, pod in gpu_pods:
        assert pod["nodeSelector"], where
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), where
    assert not any(_wants_gpu(pod) for o in render("dev-cpu") for _, pod in pod_specs(o))


def _wants_gpu(pod: dict[str, Any]) -> bool:
    return any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in pod["containers"])


def test_expected_objects(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    assert "dataengine-api" in by_kind(objects, "Deployment")
    assert "dataengine-api" in by_kind(objects, "Service")
    assert "dataengine-api" in by_kind(objects, "PodDisruptionBudget")
    assert all(k.startswith("DATAENGINE_") for k in by_kind(objects, "ConfigMap")["dataengine-api"]["data"])
    if overlay == "prod-gpu":
        vllm = by_kind(objects, "Deployment")["vllm"]["spec"]["template"]["spec"]["containers"][0]
        assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"
        assert any(a.startswith("--limit-mm-per-prompt") for a in vllm["args"])
        assert any(a.startswith("--structured-outputs-config") and "guidance" in a for a in vllm["args"])
        assert {"vllm", "dataengine-api"} <= set(by_kind(objects, "PodDisruptionBudget"))
        assert "vllm" in by_kind(objects, "Service")
        assert "vllm-model-cache" in by_kind(objects, "PersistentVolumeClaim")
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "dataengine", (
                f"{obj['kind']}/{obj['metadata']['name']}"
            )


# --- pods and containers -----------------------------------------------------------------------------


def test_every_container_is_bounded_and_unprivileged(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    seen = 0
    for where, pod, c in containers(objects):
        seen += 1
        resources = c.get("resources", {})
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{where}: {part} cpu and memory"
        pod_sec, sec = pod.get("securityContext", {}), c.get("securityContext", {})
        assert sec.get("runAsNonRoot", pod_sec.get("runAsNonRoot")) is True, where
        assert sec.get("runAsUser", pod_sec.get("runAsUser", 0)) > 0, where
        assert sec.get("privileged") is not True, where
        assert sec.get("allowPrivilegeEscalation") is False, where
        assert sec.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not sec.get("capabilities", {}).get("add"), where
        seccomp = sec.get("seccompProfile", pod_sec.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", where
        assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC")), where
        image = c["image"]
        tag = image.rpartition("/")[2].partition(":")[2]
        pinned = "@sha256:" in image or (tag and tag != "latest")
        assert pinned, f"{where}: image {image} needs a pinned tag or digest"
    assert seen >= 5


def test_autoscaler_sidecar_is_bounded(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    (cluster,) = by_kind(objects, "RayCluster").values()
    options = cluster["spec"]["autoscalerOptions"]
    assert {"cpu", "memory"} <= set(options["resources"]["limits"])
    assert options["securityContext"]["runAsNonRoot"] is True
    assert options["securityContext"]["allowPrivilegeEscalation"] is False


def test_api_has_probes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    api = by_kind(objects, "Deployment")["dataengine-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"


# --- command lines -----------------------------------------------------------------------------------


def command_lines(objects: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(where, argv) of every `dataengine ...` invocation: RayJob entrypoints and container commands."""
    found = []
    for obj in objects:
        if obj["kind"] == "RayJob":
            found.append((f"RayJob/{obj['metadata']['name']}", shlex.split(obj["spec"]["entrypoint"])))
    for where, _, c in containers(objects):
        argv = [*c.get("command", []), *c.get("args", [])]
        if argv and Path(argv[0]).name == "dataengine":
            found.append((where, argv))
    return found


def parse(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """The subcommand and its parameters, parsed by the CLI's own click command (no command runs).

    Typer 0.29 vendors click: its errors derive from ``typer.TyperException`` (``ClickException``'s base).
    """
    assert Path(argv[0]).name == "dataengine", argv
    group = get_command(app)
    with group.make_context("dataengine", argv[1:], resilient_parsing=True) as top:
        name, sub, rest = group.resolve_command(top, argv[1:])  # type: ignore[attr-defined]
    assert name is not None and sub is not None, argv
    with sub.make_context(f"dataengine {name}", rest, resilient_parsing=False) as ctx:
        return name, dict(ctx.params)


def test_command_lines_parse_and_name_real_recipes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    lines = command_lines(objects)
    assert {w for w, _ in lines} >= {"RayJob/dataengine-run", "RayJob/dataengine-train"}, lines
    for where, argv in lines:
        try:
            name, params = parse(argv)
        except typer.TyperException as error:
            pytest.fail(f"{where}: {shlex.join(argv)}: {error}")
        overrides = params.get("overrides") or []
        if name == "run":
            assert params["recipe"] in RECIPES, where
            apply_overrides(get_recipe(params["recipe"]), overrides)
            assert params["address"] == "auto", f"{where}: a RayJob runs on the cluster it was submitted to"
        elif name == "train":
            assert params["recipe"] in TRAIN_RECIPES, where
            apply_overrides(get_train_recipe(params["recipe"]), overrides)
            assert params["ray_workers"] >= 1 and params["address"] == "auto", where
        elif name == "serve":
            assert params["recipe"] in RECIPES, where
            assert params["host"] == "0.0.0.0", where
        else:
            pytest.fail(f"{where}: unexpected command {name}")


def test_parse_rejects_what_the_cli_rejects() -> None:
    with pytest.raises(typer.TyperException, match="No such option"):
        parse(["dataengine", "run", "in", "--out", "o", "--recipes", "demo"])
    with pytest.raises(typer.BadParameter):
        parse(["dataengine", "train", "--shards", "s", "--out", "o", "--ray-workers", "-1"])


# --- object storage and secrets ----------------------------------------------------------------------

S3_SECRET = "dataengine-s3"
# AWS_* variable -> whether the Secret may lack it (the region and an S3-compatible endpoint are optional)
S3_ENV = {
    "AWS_ACCESS_KEY_ID": False,
    "AWS_SECRET_ACCESS_KEY": False,
    "AWS_DEFAULT_REGION": True,
    "AWS_ENDPOINT_URL": True,
}
SECRET_WORDS = ("KEY", "SECRET", "PASSWORD", "TOKEN", "CREDENTIAL", "DATABASE_URL")


def option(argv: list[str], name: str) -> list[str]:
    """Every value given to option ``name`` in ``argv`` (``--name V`` and ``--name=V``), as written."""
    found = [v for a, v in itertools.pairwise(argv) if a == name]
    return found + [a.partition("=")[2] for a in argv if a.startswith(f"{name}=")]


def entrypoint(objects: list[dict[str, Any]], job: str) -> list[str]:
    return shlex.split(by_kind(objects, "RayJob")[job]["spec"]["entrypoint"])


def test_prod_runs_write_to_object_storage() -> None:
    """The run's --out is an s3:// URL, the trainer reads the same URL, and no ReadWriteMany volume holds
    run output: each one a prod pod mounts is there for the model cache or the trainer's checkpoints."""
    objects = render("prod-gpu")
    (out,) = option(entrypoint(objects, "dataengine-run"), "--out")
    url = urlsplit(out)
    assert url.scheme == "s3" and url.netloc and url.path.strip("/"), f"--out {out}: s3://BUCKET/RUN"
    assert "@" not in url.netloc, f"--out {out}: credentials belong in the Secret {S3_SECRET}"
    train = entrypoint(objects, "dataengine-train")
    assert option(train, "--shards") == [out], "the trainer reads the shards the run wrote"
    rendered_text = yaml.safe_dump_all(objects)
    assert "/mnt/shared/runs" not in rendered_text

    rwx = {
        name
        for name, claim in by_kind(objects, "PersistentVolumeClaim").items()
        if "ReadWriteMany" in claim["spec"]["accessModes"]
    }
    uses = option(train, "--out")  # checkpoints: rank 0 writes, every rank resumes
    caches = ("_HOME", "_CACHE", "_ROOT")  # XDG_CACHE_HOME, HF_HOME, DATAENGINE_CACHE, VLLM_CACHE_ROOT
    for _, _, c in containers(objects):
        uses += [e.get("value", "") for e in c.get("env", []) if e["name"].endswith(caches)]
    for where, pod, c in containers(objects):
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        for mount in c.get("volumeMounts", []):
            if claims.get(mount["name"]) not in rwx:
                continue
            root = mount["mountPath"].rstrip("/") + "/"
            assert any(u.startswith(root) for u in uses if u), (
                f"{where}: ReadWriteMany {claims[mount['name']]} at {root} holds no cache or checkpoints"
            )


def test_dev_keeps_runs_on_its_volume() -> None:
    objects = render("dev-cpu")
    (out,) = option(entrypoint(objects, "dataengine-run"), "--out")
    assert out.startswith("/mnt/shared/"), out
    assert option(entrypoint(objects, "dataengine-train"), "--shards") == [out]


def test_prod_s3_credentials_come_from_the_secret() -> None:
    """AWS_* on the Ray head and every worker group (drivers on the head; writers and the trainer's Ray
    Train workers on the workers) and on the API, each a secretKeyRef into dataengine-s3."""
    objects = render("prod-gpu")
    (cluster,) = by_kind(objects, "RayCluster").values()
    ray_pods = {w: pod for w, pod in pod_specs(cluster)}
    assert len(ray_pods) >= 3, ray_pods.keys()  # head, cpu, gpu
    # the trainer (and the run) are RayJobs on that cluster: their code runs in those pods
    for name, job in by_kind(objects, "RayJob").items():
        assert "rayClusterSpec" not in job["spec"], f"{name}: an own cluster would need the credentials too"
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"], name
    api = by_kind(objects, "Deployment")["dataengine-api"]["spec"]["template"]["spec"]
    for where, pod in [*ray_pods.items(), ("Deployment/dataengine-api", api)]:
        for c in pod["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            for name, optional in S3_ENV.items():
                assert name in env, f"{where}/{c['name']}: {name} missing"
                ref = env[name].get("valueFrom", {}).get("secretKeyRef")
                assert ref and "value" not in env[name], f"{where}/{c['name']}: {name} not from a Secret"
                assert ref["name"] == S3_SECRET and ref["key"] == name, f"{where}/{c['name']}: {ref}"
                assert bool(ref.get("optional")) == optional, f"{where}/{c['name']}: {name} optional"


def test_no_literal_secrets(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    for where, _, c in containers(objects):
        for e in c.get("env", []):
            if any(w in e["name"].upper() for w in SECRET_WORDS):
                assert "value" not in e, f"{where}: {e['name']} is literal; use a secretKeyRef"
    for name, cm in by_kind(objects, "ConfigMap").items():
        for key in cm.get("data", {}):
            assert not any(w in key.upper() for w in SECRET_WORDS), f"ConfigMap/{name}: {key}"
    text = yaml.safe_dump_all(objects)
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "an AWS access key id in the manifests"
    assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*[=:]\s*[A-Za-z0-9/+]{20,}", text)
    assert not re.search(r"s3://[^/\s]*@", text), "credentials in an s3:// URL"
    for where, argv in command_lines(objects):
        assert not any("AWS_" in a for a in argv), f"{where}: credentials on a command line"
    if overlay == "prod-gpu":  # dev-cpu generates a placeholder API key; prod creates every Secret by hand
        assert not by_kind(objects, "Secret"), "prod-gpu must not carry a Secret: create it with kubectl"


# --- scanner -----------------------------------------------------------------------------------------


def checkov() -> str:
    bundled = Path(sys.executable).parent.parent / "tools" / "checkov" / "bin" / "checkov"  # by .ci/setup
    found = os.environ.get("CHECKOV") or (str(bundled) if bundled.exists() else shutil.which("checkov"))
    if not found:
        pytest.skip(
            "checkov is not installed: it pins boto3 at a version the lock cannot take; install it in its "
            "own virtualenv and set CHECKOV=/path/to/bin/checkov (k8s/README.md 'Checks')"
        )
    return found


@pytest.mark.slow
def test_checkov_finds_nothing_that_matters(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    overlay, objects = rendered
    binary = checkov()
    (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objects))
    done = subprocess.run(
        [binary, "-d", str(tmp_path), "--framework", "kubernetes", "--quiet", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr  # 1: some check failed, judged below
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [f for r in reports for f in r.get("results", {}).get("failed_checks", [])]
    bad = [
        f"{f['check_id']} ({REQUIRED_CHECKS.get(f['check_id'], f.get('severity'))}) {f['resource']}"
        for f in failed
        if f["check_id"] in REQUIRED_CHECKS or (f.get("severity") or "").upper() in {"HIGH", "CRITICAL"}
    ]
    assert not bad, "\n".join(bad)
    assert sum(r["summary"]["passed"] for r in reports) > 0, "checkov scanned nothing"
