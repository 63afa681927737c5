"""cluster/: the launcher YAML against Ray's own JSON schema, KubeRay manifests against the CRD fields they use,
the job specs against JobSpec and the registries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shapley_svc.runner.driver import check_job
from shapley_svc.spec import load_spec

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"

# The subset of the KubeRay ray.io/v1 CRDs (RayCluster, RayJob) these manifests use: for each object, the
# keys it may hold ("*" = free-form, e.g. a Kubernetes PodTemplateSpec checked by Kubernetes itself).
POD_TEMPLATE = "*"
HEAD_GROUP = {"serviceType": str, "rayStartParams": dict, "template": POD_TEMPLATE, "enableIngress": bool}
WORKER_GROUP = {
    "groupName": str,
    "replicas": int,
    "minReplicas": int,
    "maxReplicas": int,
    "rayStartParams": dict,
    "template": POD_TEMPLATE,
    "suspend": bool,
    "numOfHosts": int,
}
RAY_CLUSTER_SPEC = {
    "rayVersion": str,
    "enableInTreeAutoscaling": bool,
    "autoscalerOptions": dict,
    "headServiceAnnotations": dict,
    "headGroupSpec": HEAD_GROUP,
    "workerGroupSpecs": [WORKER_GROUP],
    "suspend": bool,
}
RAY_JOB_SPEC = {
    "entrypoint": str,
    "runtimeEnvYAML": str,
    "jobId": str,
    "metadata": dict,
    "shutdownAfterJobFinishes": bool,
    "ttlSecondsAfterFinished": int,
    "activeDeadlineSeconds": int,
    "submissionMode": str,
    "submitterPodTemplate": POD_TEMPLATE,
    "entrypointNumCpus": (int, float),
    "entrypointNumGpus": (int, float),
    "backoffLimit": int,
    "rayClusterSpec": RAY_CLUSTER_SPEC,
    "clusterSelector": dict,
    "suspend": bool,
}
TOP = {"apiVersion": str, "kind": str, "metadata": dict}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def check(value: Any, allowed: Any, path: str) -> list[str]:
    """Paths of keys (or values) in ``value`` that ``allowed`` does not permit."""
    if allowed == "*":
        return [] if isinstance(value, dict) else [f"{path}: expected a mapping"]
    if isinstance(allowed, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [problem for index, item in enumerate(value) for problem in check(item, allowed[0], f"{path}[{index}]")]
    if isinstance(allowed, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        problems = [f"{path}.{key}: not a field of the CRD" for key in value if key not in allowed]
        return problems + [
            problem
            for key, item in value.items()
            if key in allowed
            for problem in check(item, allowed[key], f"{path}.{key}")
        ]
    type_ok = isinstance(value, bool) if allowed is bool else isinstance(value, allowed) and not isinstance(value, bool)
    return [] if type_ok else [f"{path}: {value!r} has the wrong type"]


def test_launcher_yaml_matches_rays_schema() -> None:
    ray = pytest.importorskip("ray")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
    assert config["head_node_type"] in config["available_node_types"]


def test_raycluster_uses_only_crd_fields() -> None:
    manifest = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    problems = check({k: v for k, v in manifest.items() if k != "spec"}, TOP, "") + check(
        manifest["spec"], RAY_CLUSTER_SPEC, "spec"
    )
    assert problems == []
    workers = manifest["spec"]["workerGroupSpecs"]
    assert all(group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] for group in workers)
    gpu = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu == int(workers[0]["rayStartParams"]["num-gpus"]) == 1


def test_rayjob_uses_only_crd_fields_and_runs_the_entrypoint() -> None:
    manifest = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    problems = check({k: v for k, v in manifest.items() if k != "spec"}, TOP, "") + check(
        manifest["spec"], RAY_JOB_SPEC, "spec"
    )
    assert problems == []
    assert manifest["spec"]["submissionMode"] in SUBMISSION_MODES
    assert manifest["spec"]["entrypoint"].startswith("python -m shapley_svc.runner.entrypoint ")
    yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])


def test_the_crd_check_catches_a_typo() -> None:
    assert check({"workerGroupSpecs": [{"groupName": "g", "replica": 2}]}, RAY_CLUSTER_SPEC, "spec") == [
        "spec.workerGroupSpecs[0].replica: not a field of the CRD"
    ]


def test_runtime_env_and_job_specs_are_valid() -> None:
    runtime_env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(runtime_env) <= {"working_dir", "excludes", "pip", "env_vars", "py_modules", "conda", "uv"}
    gpu = load_spec(CLUSTER / "gpu-job.yaml")
    assert gpu.executor.kind == "ray" and gpu.executor.num_gpus_per_worker == 1 and gpu.model.device == "cuda"
    local = load_spec(CLUSTER / "example-job.yaml")
    assert local.executor.kind == "ray" and local.executor.num_gpus_per_worker == 0 and local.model.device == "cpu"
    assert local.executor.address is None, "inside `ray job submit` the entrypoint joins the cluster it runs on"
    for spec in (gpu, local):
        check_job(spec)  # estimator names and parameters, stopping rules
