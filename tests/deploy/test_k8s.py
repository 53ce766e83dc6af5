"""deploy/k8s: every overlay renders (tests/deploy/k8s_render.py, the kustomize subset the manifests use), every
object passes the Kubernetes 1.37 OpenAPI schemas offline (kubernetes-validate, strict: unknown fields are errors),
the CRDs those schemas lack (ServiceMonitor, InferenceService) pass a structural schema of our own built on the
same core definitions, and the manifests agree with the code and the image: probe paths are real routes, ports
match, the user is the image's non-root one, ConfigMap keys are real settings, the drain fits the grace period."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]' (kubernetes-validate)")

import jsonschema  # noqa: E402  (a dependency of kubernetes-validate)
from k8s_render import RenderError, merge, render  # noqa: E402
from referencing import Registry, Resource  # noqa: E402

from service.app import create_app  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from service.settings import Settings  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37"  # the newest schemas kubernetes-validate 1.37.0 bundles
OVERLAYS = ["cpu", "gpu", "kserve"]
QUEUE_DEPTH = K8S / "components" / "queue-depth-hpa"
CRDS = {"ServiceMonitor", "InferenceService"}


def rendered(overlay: str, with_queue_depth: bool = False) -> list[dict]:
    return render(K8S / "overlays" / overlay, [QUEUE_DEPTH] if with_queue_depth else None)


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


RENDERINGS = [(o, False) for o in OVERLAYS] + [("cpu", True), ("gpu", True)]


# -- schema validation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay,queue_depth", RENDERINGS)
def test_every_built_in_object_passes_the_kubernetes_schema(overlay, queue_depth):
    objects = rendered(overlay, queue_depth)
    checked = []
    for obj in objects:
        if obj["kind"] in CRDS:
            continue
        kv.validate(obj, KUBERNETES_VERSION, strict=True)  # raises with the failing path
        checked.append(obj["kind"])
    expected = {"kserve": {"ConfigMap"}}.get(
        overlay, {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
    )
    assert set(checked) == expected  # nothing skipped by accident


def test_the_schema_check_catches_a_wrong_field():
    deployment = one(rendered("cpu"), "Deployment")
    bad = merge(deployment, {"spec": {"template": {"spec": {"containers": [{"name": "api", "livenesProbe": {}}]}}}})
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, KUBERNETES_VERSION, strict=True)


def _crd_validator(schema: dict) -> jsonschema.Validator:
    """A Draft 2020-12 validator whose schema may $ref the bundled core definitions (Container, Volume, ...)."""
    import importlib.resources
    import json

    defs_file = importlib.resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict/_definitions.json"
    )
    defs = json.loads(defs_file.read_text())
    registry = Registry().with_resource(defs["$id"], Resource.from_contents(defs))
    return jsonschema.Draft202012Validator(schema, registry=registry)


CORE = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s."
META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "labels": {"type": "object"}}}
SERVICE_MONITOR = {  # the fields of monitoring.coreos.com/v1 ServiceMonitor this project uses, closed to typos
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"$ref": CORE + "apimachinery.pkg.apis.meta.v1.LabelSelector"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                            "scrapeTimeout": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                        },
                    },
                },
            },
        },
    },
}
INFERENCE_SERVICE = {  # serving.kserve.io/v1beta1: the predictor's PodSpec fields are core ones
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["predictor"],
            "properties": {
                "predictor": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["containers"],
                    "properties": {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 1},
                        "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                        "scaleTarget": {"type": "integer"},
                        "automountServiceAccountToken": {"type": "boolean"},
                        "enableServiceLinks": {"type": "boolean"},
                        "containers": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 1,
                            "items": {"$ref": CORE + "api.core.v1.Container"},
                        },
                        "volumes": {"type": "array", "items": {"$ref": CORE + "api.core.v1.Volume"}},
                    },
                }
            },
        },
    },
}


@pytest.mark.parametrize(
    "kind,schema,overlay", [("ServiceMonitor", SERVICE_MONITOR, "cpu"), ("InferenceService", INFERENCE_SERVICE, "kserve")]
)
def test_crds_pass_a_structural_schema(kind, schema, overlay):
    validator = _crd_validator(schema)
    obj = one(rendered(overlay), kind)
    validator.validate(obj)
    with pytest.raises(jsonschema.ValidationError):  # the schema is closed: a misspelt field fails
        validator.validate(merge(obj, {"spec": {"endpoints" if kind == "ServiceMonitor" else "predictor": None, "selectr": {}}}))


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(RenderError, match="namePrefix"):
        render(tmp_path)


# -- invariants ------------------------------------------------------------------------------------------------------
def pod_containers(obj: dict) -> tuple[dict, list[dict]]:
    pod = obj["spec"]["predictor"] if obj["kind"] == "InferenceService" else obj["spec"]["template"]["spec"]
    return pod, pod["containers"]


def workloads() -> list[tuple[str, dict]]:
    return [(o, w) for o in OVERLAYS for w in rendered(o) if w["kind"] in ("Deployment", "InferenceService")]


def app_get_routes() -> set[str]:
    """From the app's OpenAPI document: FastAPI keeps included routers wrapped, so `app.routes` does not list them."""
    app = create_app(Settings())  # builds routes only; models load in the lifespan, which never runs here
    return {path for path, methods in app.openapi()["paths"].items() if "get" in methods}


@pytest.mark.parametrize("overlay,workload", workloads(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_probe_paths_are_real_get_routes(overlay, workload):
    routes = app_get_routes()
    _, containers = pod_containers(workload)
    probes = {name: c[name] for c in containers for name in ("startupProbe", "readinessProbe", "livenessProbe") if name in c}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"  # the one that runs a real inference
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"  # never model work
    for name, probe in probes.items():
        assert probe["httpGet"]["path"] in routes, name


def test_service_monitor_scrapes_the_metrics_route_on_a_service_port():
    objects = rendered("cpu")
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] in app_get_routes() and endpoint["port"] in port_names
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def _arg(container: dict, flag: str) -> str:
    args = container["args"]
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("overlay,workload", workloads(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_ports_match_the_image_and_the_service(overlay, workload):
    exposed = set(re.findall(r"^EXPOSE (\d+)$", dockerfile(), re.MULTILINE))
    assert len(exposed) == 1  # CPU and GPU stages agree
    image_port = int(exposed.pop())
    _, (container,) = pod_containers(workload)
    (port,) = container["ports"]
    assert port["containerPort"] == image_port == int(_arg(container, "--port"))
    if workload["kind"] == "Deployment":
        service = one(rendered(overlay), "Service")
        target = service["spec"]["ports"][0]["targetPort"]
        assert target == port["containerPort"] or target == port["name"]
        assert service["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        policy = one(rendered(overlay), "NetworkPolicy")
        assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [image_port]


@pytest.mark.parametrize("overlay,workload", workloads(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_runs_as_the_images_non_root_user_hardened(overlay, workload):
    uid = int(re.search(r"useradd --uid (\d+)", dockerfile()).group(1))
    assert uid != 0 and f"USER {uid}:{uid}" in dockerfile()
    pod, (container,) = pod_containers(workload)
    security = {**pod.get("securityContext", {}), **container["securityContext"]}  # the container's wins
    assert security["runAsNonRoot"] is True and security["runAsUser"] == uid
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")  # HOME=/tmp in the image
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_keys_are_real_settings_and_the_api_keys_come_from_a_secret(overlay):
    objects = rendered(overlay)
    data = one(objects, "ConfigMap")["data"]
    real = {f"SENTIMENT_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= real, set(data) - real
    assert "SENTIMENT_API_KEYS" not in data
    Settings(**{key.removeprefix("SENTIMENT_").lower(): value for key, value in data.items()})  # values validate
    workload = next(o for o in objects if o["kind"] in ("Deployment", "InferenceService"))
    _, (container,) = pod_containers(workload)
    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == [one(objects, "ConfigMap")["metadata"]["name"]]
    keys = next(e for e in container["env"] if e["name"] == "SENTIMENT_API_KEYS")
    assert keys["valueFrom"]["secretKeyRef"]["key"] == "SENTIMENT_API_KEYS"
    assert not keys["valueFrom"]["secretKeyRef"].get("optional")  # no pod without authentication


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_prestop_and_grace_period_cover_the_drain(overlay):
    deployment = one(rendered(overlay), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = float(_arg(container, "--graceful-timeout"))
    # The endpoint leaves the Service during the sleep, uvicorn drains after it; a few seconds of slack for the
    # lifespan shutdown, but not so many that a stuck pod lingers.
    assert float(command[1]) + drain < pod["terminationGracePeriodSeconds"] <= float(command[1]) + drain + 10


def test_the_drain_flag_is_sentiment_serves(capsys):
    from service.server import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--graceful-timeout" in capsys.readouterr().out


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", quantity).groups()
    return float(number) * units.get(unit, 1)


def test_memory_request_is_the_measured_rss_of_a_replica():
    """Within 20% of the RSS `make load` measured (benchmarks/load_results.json: the shipped models, diagnostics
    included), and the limit above it."""
    import json

    measured_mb = json.loads((REPO / "benchmarks" / "load_results.json").read_text())["rss_mb"]["end"]
    resources = one(rendered("cpu"), "Deployment")["spec"]["template"]["spec"]["containers"][0]["resources"]
    request = _bytes(resources["requests"]["memory"]) / 2**20
    assert measured_mb <= request <= 1.2 * measured_mb
    assert _bytes(resources["limits"]["memory"]) > _bytes(resources["requests"]["memory"])


def test_gpu_overlay_requests_a_gpu_and_runs_the_gpu_image():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    gpu_image = re.fullmatch(r"\$\{\w+:-(.+)\}", compose["services"]["api-gpu"]["image"]).group(1)
    cpu_image = re.fullmatch(r"\$\{\w+:-(.+)\}", compose["services"]["api"]["image"]).group(1)
    assert "FROM ${CUDA_IMAGE} AS gpu" in dockerfile()
    gpu, cpu = rendered("gpu"), rendered("cpu")
    (gpu_container,) = one(gpu, "Deployment")["spec"]["template"]["spec"]["containers"]
    (cpu_container,) = one(cpu, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert gpu_container["image"] == gpu_image and cpu_container["image"] == cpu_image
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in str(cpu_container["resources"])
    assert one(gpu, "ConfigMap")["data"]["SENTIMENT_PROVIDERS"] == "cuda"
    assert one(cpu, "ConfigMap")["data"]["SENTIMENT_PROVIDERS"] == "cpu"
    # the patch merged into the container rather than replacing it
    assert gpu_container["readinessProbe"] == cpu_container["readinessProbe"]
    assert gpu_container["env"] == cpu_container["env"]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_autoscaling_disruption_budget_and_selectors_target_the_deployment(overlay):
    objects = rendered(overlay)
    deployment = one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2  # with maxUnavailable 1, a drain never takes the last replica
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    for kind, path in (("PodDisruptionBudget", ("selector",)), ("NetworkPolicy", ("podSelector",))):
        selector = one(objects, kind)["spec"][path[0]]["matchLabels"]
        assert selector.items() <= labels.items(), kind
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_queue_depth_component_scales_on_the_services_queue_metric():
    hpa = one(rendered("cpu", with_queue_depth=True), "HorizontalPodAutoscaler")
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == ["sentiment_queue_depth"]
    assert Metrics().queue_depth._name == "sentiment_queue_depth"  # the gauge /metrics exports
    assert any(m["type"] == "Resource" for m in hpa["spec"]["metrics"])  # CPU kept beside it
