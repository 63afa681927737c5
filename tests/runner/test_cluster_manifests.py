"""cluster/: the launcher YAML against Ray's own JSON schema, KubeRay manifests against the CRD fields they use,
the job specs against JobSpec and the registries; every file, volume, secret and package a manifest refers to
exists or is created by the manifests or the commands of cluster/README.md; the WikiText-2 fetcher."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from shapley_svc.data.corpus import WIKITEXT2_TEST_FILE, default_data_dir
from shapley_svc.runner.driver import check_job
from shapley_svc.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"

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
    assert entrypoint_commands(manifest["spec"]["entrypoint"])[-1] == [
        "python", "-m", "shapley_svc.runner.entrypoint", "cluster/gpu-job.yaml"
    ]  # fmt: skip
    yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])


def entrypoint_commands(entrypoint: str) -> list[list[str]]:
    """The commands of a RayJob entrypoint: ``bash -c "A && B"`` (a bare ``&&`` would run in the submitter)."""
    words = shlex.split(entrypoint)
    assert words[:2] == ["bash", "-c"] and len(words) == 3, f"not one `bash -c` command: {entrypoint}"
    return [shlex.split(command) for command in words[2].split("&&")]


def test_the_crd_check_catches_a_typo() -> None:
    assert check({"workerGroupSpecs": [{"groupName": "g", "replica": 2}]}, RAY_CLUSTER_SPEC, "spec") == [
        "spec.workerGroupSpecs[0].replica: not a field of the CRD"
    ]


def test_runtime_env_and_job_specs_are_valid() -> None:
    runtime_env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(runtime_env) <= {"working_dir", "excludes", "env_vars", "py_modules"}, "it installs nothing"
    assert runtime_env["working_dir"] == "." and "shapley_svc" not in runtime_env["excludes"]
    gpu = load_spec(CLUSTER / "gpu-job.yaml")
    assert gpu.executor.kind == "ray" and gpu.executor.num_gpus_per_worker == 1 and gpu.model.device == "cuda"
    local = load_spec(CLUSTER / "example-job.yaml")
    assert local.executor.kind == "ray" and local.executor.num_gpus_per_worker == 0 and local.model.device == "cpu"
    assert local.executor.address is None, "inside `ray job submit` the entrypoint joins the cluster it runs on"
    for spec in (gpu, local):
        check_job(spec)  # estimator names and parameters, stopping rules


# --- what the manifests refer to ---------------------------------------------------------------------------------
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<version>[0-9.]+)-py311(-gpu)?$")
NODE_CHECKOUT = "/home/ray/shapley-svc"  # where aws-gpu.yaml's file_mounts put this checkout on every node
ZIP_MOUNT = "/opt/shapley-svc"  # where rayjob.yaml mounts the ConfigMap holding the source zip


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def constraints() -> dict[str, str]:
    """constraints.txt as normalised name -> pinned version."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            pins[normalise(requirement.name)] = specifier.version
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def readme_commands() -> list[list[str]]:
    """Each shell command in cluster/README.md's code blocks, split into words (continuation lines joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", (CLUSTER / "README.md").read_text(), flags=re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                command: list[str] = []
                for word in [*shlex.split(line), "&&"]:
                    if word in {"&&", "&"}:
                        commands.extend([command] if command else [])
                        command = []
                    else:
                        command.append(word)
    return commands


def created_by_readme(kind: str) -> dict[str, list[str]]:
    """Names of the ``kubectl create KIND ...`` objects of cluster/README.md -> that command's words."""
    created = {}
    for words in readme_commands():
        if words[:3] == ["kubectl", "create", kind] or words[:4] == ["kubectl", "create", "secret", "generic"]:
            if kind == "secret" and words[2] != "secret":
                continue
            name = words[4] if kind == "secret" else words[3]
            created[name] = words
    return created


def kuberay_manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(KUBERAY.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and "kind" in document:  # runtime_env.yaml there is no manifest
                yield path.name, document


def pod_specs(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(role, PodSpec) of every pod template of a RayCluster or RayJob manifest."""
    spec = manifest["spec"]
    if manifest["kind"] == "RayJob":
        if "submitterPodTemplate" in spec:
            yield "submitter", spec["submitterPodTemplate"]["spec"]
        spec = spec["rayClusterSpec"]
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield f"worker group {group['groupName']}", group["template"]["spec"]


def ray_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in kuberay_manifests() if doc["kind"] in {"RayCluster", "RayJob"}]


def test_every_volume_a_pod_mounts_is_defined_and_exists() -> None:
    claims = {doc["metadata"]["name"] for _, doc in kuberay_manifests() if doc["kind"] == "PersistentVolumeClaim"}
    assert "ReadWriteMany" in next(
        doc["spec"]["accessModes"] for _, doc in kuberay_manifests() if doc["kind"] == "PersistentVolumeClaim"
    ), "the head and every worker mount the shared volume at once"
    configmaps = created_by_readme("configmap")
    problems = []
    for file, manifest in ray_manifests():
        for role, pod in pod_specs(manifest):
            volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
            for container in pod["containers"]:
                for mount in container.get("volumeMounts", []):
                    if mount["name"] not in volumes:
                        problems.append(f"{file} {role}: mounts {mount['name']!r}, which its pod does not define")
            for volume in volumes.values():
                if "persistentVolumeClaim" in volume and volume["persistentVolumeClaim"]["claimName"] not in claims:
                    problems.append(f"{file} {role}: claim {volume['persistentVolumeClaim']['claimName']!r} undefined")
                if "configMap" in volume and volume["configMap"]["name"] not in configmaps:
                    problems.append(f"{file} {role}: ConfigMap {volume['configMap']['name']!r} created nowhere")
    assert problems == []


def test_hf_token_comes_from_a_secret_the_readme_creates_on_every_node() -> None:
    secrets = created_by_readme("secret")
    for file, manifest in ray_manifests():
        for role, pod in pod_specs(manifest):
            if role == "submitter":
                continue
            (container,) = pod["containers"]
            env = {item["name"]: item for item in container.get("env", [])}
            reference = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert reference["name"] in secrets, f"{file} {role}: secret {reference['name']!r} created nowhere"
            assert f"--from-literal={reference['key']}=hf_..." in secrets[reference["name"]]
    launcher = load_yaml(CLUSTER / "aws-gpu.yaml")
    assert launcher["file_mounts"]["/home/ray/.cache/huggingface/token"] == "~/.cache/huggingface/token"
    assert "hf auth login" in (CLUSTER / "README.md").read_text(), "the README says how the token file is made"


def test_the_specs_paths_lie_on_the_volumes_the_pods_mount() -> None:
    gpu = load_spec(CLUSTER / "gpu-job.yaml")
    data_dirs = [task.params["data_dir"] for task in gpu.tasks if "data_dir" in task.params]
    assert data_dirs == ["/mnt/shared/data"]
    needed = {"head": [gpu.store.path, *data_dirs], "worker": data_dirs}
    for file, manifest in ray_manifests():
        for role, pod in pod_specs(manifest):
            if role == "submitter":
                continue
            mounts = [mount["mountPath"] for container in pod["containers"] for mount in container["volumeMounts"]]
            for path in needed[role.split()[0]]:
                assert any(path.startswith(f"{mount}/") for mount in mounts), f"{file} {role}: {path} not mounted"
    launcher = load_yaml(CLUSTER / "aws-gpu.yaml")
    assert "--volume /mnt/shared:/mnt/shared" in launcher["docker"]["run_options"]
    assert "python /home/ray/shapley-svc/cluster/fetch_data.py /mnt/shared/data" in launcher["setup_commands"]
    rayjob = load_yaml(KUBERAY / "rayjob.yaml")
    assert entrypoint_commands(rayjob["spec"]["entrypoint"])[0] == ["python", "cluster/fetch_data.py", *data_dirs]


def test_every_file_the_manifests_name_exists() -> None:
    launcher = load_yaml(CLUSTER / "aws-gpu.yaml")
    assert launcher["file_mounts"][NODE_CHECKOUT] == "."
    node_paths = [word for line in launcher["setup_commands"] for word in shlex.split(line) if NODE_CHECKOUT in word]
    assert node_paths
    extras = pyproject()["optional-dependencies"]
    for word in node_paths:
        path, _, named = word.removeprefix(NODE_CHECKOUT).lstrip("/").partition("[")
        assert (REPO / path).exists(), f"aws-gpu.yaml setup_commands name {word}, but {REPO / path} does not exist"
        assert all(extra in extras for extra in named.rstrip("]").split(",") if extra), f"{word}: no such extra"
    # the RayJob's working_dir is the ConfigMap's key, mounted in the submitter; the entrypoint's files are in the zip
    rayjob = load_yaml(KUBERAY / "rayjob.yaml")
    working_dir = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["working_dir"]
    (submitter,) = rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert {"name": "source", "mountPath": ZIP_MOUNT, "readOnly": True} in submitter["volumeMounts"]
    zip_name = working_dir.removeprefix(f"{ZIP_MOUNT}/")
    assert created_by_readme("configmap")["shapley-svc-src"][4:] == [f"--from-file={zip_name}"]
    archive = next(words for words in readme_commands() if words[:2] == ["git", "archive"])
    assert archive[archive.index("-o") + 1] == zip_name
    zipped = archive[archive.index("HEAD") + 1 :]
    for word in [word for command in entrypoint_commands(rayjob["spec"]["entrypoint"]) for word in command]:
        if word.endswith((".py", ".yaml")):
            assert word.split("/")[0] in zipped and (REPO / word).is_file(), f"{word} is not in the zip"
    # the Dockerfile copies only what exists
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources = [word for word in line.split()[1:-1] if not word.startswith("--")]
            assert sources and all((REPO / source).exists() for source in sources), line


def test_no_manifest_installs_shapley_svc_from_an_index() -> None:
    texts = {path.name: path.read_text() for path in [*CLUSTER.glob("*.yaml"), *KUBERAY.glob("*.yaml")]}
    texts["Dockerfile"] = (CLUSTER / "Dockerfile").read_text()
    for name, text in texts.items():
        for line in text.splitlines():
            if "pip install" in line and "shapley-svc" in line:
                target = shlex.split(line.split("pip install", 1)[1])[-1]
                assert target.startswith(("/", ".")), f"{name}: {line.strip()} installs from an index"
    for path in (CLUSTER / "runtime_env.yaml", KUBERAY / "runtime_env.yaml"):
        packages = (load_yaml(path).get("pip") or {}).get("packages", [])
        assert all(normalise(Requirement(p).name) != "shapley-svc" for p in packages), path


def test_the_kuberay_pip_list_is_the_packages_dependencies_at_the_tested_versions() -> None:
    pins = constraints()
    wanted = {Requirement(line) for line in pyproject()["dependencies"]} | {
        Requirement(line) for line in pyproject()["optional-dependencies"]["hub"]
    }
    shipped = load_yaml(CLUSTER / "runtime_env.yaml")
    for_stock_image = load_yaml(KUBERAY / "runtime_env.yaml")
    packages = [Requirement(line) for line in for_stock_image["pip"]["packages"]]
    assert {normalise(p.name) for p in packages} == {normalise(w.name) for w in wanted}
    for package in packages:
        (specifier,) = package.specifier
        assert specifier.operator == "==" and specifier.version == pins[normalise(package.name)], package
        requirement = next(w for w in wanted if normalise(w.name) == normalise(package.name))
        assert requirement.specifier.contains(specifier.version), f"{package} is outside {requirement}"
    assert {k: v for k, v in for_stock_image.items() if k != "pip"} == shipped
    in_rayjob = yaml.safe_load(load_yaml(KUBERAY / "rayjob.yaml")["spec"]["runtimeEnvYAML"])
    expected = {k: v for k, v in for_stock_image.items() if k not in {"working_dir", "excludes"}}
    assert {k: v for k, v in in_rayjob.items() if k != "working_dir"} == expected


def test_images_and_ray_versions_are_the_tested_ray() -> None:
    ray_version = constraints()["ray"]
    launcher = load_yaml(CLUSTER / "aws-gpu.yaml")
    images = [("aws-gpu.yaml", launcher["docker"]["image"])]
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    images += [("Dockerfile", line.split()[1]) for line in dockerfile.splitlines() if line.startswith("FROM ")]
    for file, manifest in ray_manifests():
        spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
        assert spec["rayVersion"] == ray_version, file
        images += [(file, c["image"]) for _, pod in pod_specs(manifest) for c in pod["containers"]]
    for file, image in images:
        match = RAY_IMAGE.match(image)
        assert match and match["version"] == ray_version, f"{file}: {image} is not rayproject/ray:{ray_version}"


def test_each_target_has_the_gpus_the_gpu_spec_asks_for() -> None:
    gpu = load_spec(CLUSTER / "gpu-job.yaml")
    needed = gpu.executor.num_workers * gpu.executor.num_gpus_per_worker
    rayjob = load_yaml(KUBERAY / "rayjob.yaml")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert sum(g["replicas"] * int(g["rayStartParams"]["num-gpus"]) for g in rayjob) >= needed
    raycluster = load_yaml(KUBERAY / "raycluster.yaml")["spec"]["workerGroupSpecs"]
    assert sum(g["maxReplicas"] * int(g["rayStartParams"]["num-gpus"]) for g in raycluster) >= needed
    launcher = load_yaml(CLUSTER / "aws-gpu.yaml")
    worker = launcher["available_node_types"]["gpu_worker"]
    assert worker["max_workers"] * worker["resources"]["GPU"] >= needed


# --- cluster/fetch_data.py ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fetch_data() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_data", CLUSTER / "fetch_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hub_rows() -> list[str]:
    """The shared WikiText-2 file as the hub's rows (a line plus LF; "" for a blank line, a single space on disk)."""
    path = default_data_dir() / WIKITEXT2_TEST_FILE
    if not path.is_file():
        pytest.skip(f"needs the shared data folder ({path})")
    return ["" if line == " " else f"{line}\n" for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_hub_rows_rebuild_the_shared_file_byte_for_byte(fetch_data: ModuleType, hub_rows: list[str]) -> None:
    # the hub's dataset card gives num_bytes 1,305,088 for 4,358 rows: UTF-8 sizes plus a 4-byte offset per row
    assert len(hub_rows) == fetch_data.LINES and sum(len(r.encode()) + 4 for r in hub_rows) == 1_305_088
    rebuilt = fetch_data.checked(fetch_data.raw_text(hub_rows))
    assert rebuilt == (default_data_dir() / WIKITEXT2_TEST_FILE).read_bytes()
    assert hashlib.sha256(rebuilt).hexdigest() == fetch_data.SHA256


def test_fetch_writes_once_and_refuses_other_rows(fetch_data: ModuleType, hub_rows: list[str], tmp_path: Path) -> None:
    target = fetch_data.fetch(tmp_path, rows=hub_rows)
    assert target == tmp_path / WIKITEXT2_TEST_FILE and [p.name for p in target.parent.iterdir()] == [target.name]
    assert fetch_data.fetch(tmp_path, rows=["not used: the right file is there"]) == target
    with pytest.raises(fetch_data.FetchError, match="sha256"):
        fetch_data.fetch(tmp_path / "other", rows=hub_rows[:-1])
    assert not (tmp_path / "other" / WIKITEXT2_TEST_FILE).exists()
