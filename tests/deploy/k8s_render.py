"""A small renderer for the subset of kustomize that deploy/k8s uses, so the tests can build the overlays offline
(no kustomize binary on the package index). It refuses any kustomization field it does not implement, so a
manifest that starts using one fails here instead of being rendered wrong.

    render(Path("deploy/k8s/overlays/gpu"))                       # -> list of objects, as `kubectl kustomize` gives
    render(path, components=[Path("deploy/k8s/components/x")])    # as if listed under `components:`

Implemented: `resources` (files and directories), `components`, `images` (name, newName, newTag, digest) and
`patches` with a `path` to a strategic-merge patch found by apiVersion/kind/name. The merge follows Kubernetes'
patch strategy for the lists used here: containers, env, volumes by name, volumeMounts by mountPath, ports by
containerPort; any other list is replaced, as kubectl does for lists without a merge key (HPA metrics,
tolerations, args).
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

KNOWN_FIELDS = {"apiVersion", "kind", "resources", "components", "images", "patches"}
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


class RenderError(ValueError):
    """A kustomization this renderer cannot build (unknown field, missing file, patch with no target)."""


def _load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _key(obj: dict) -> tuple[str, str, str]:
    return obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else "", obj["kind"], obj["metadata"]["name"]


def merge(base, patch, field: str | None = None):
    """Strategic merge of `patch` into `base` (both plain YAML values); returns a new value."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value, key) if key in base and value is not None else value
        return {k: v for k, v in out.items() if v is not None}  # `key: null` deletes, as in kubectl
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out = [copy.deepcopy(item) for item in base]
        for item in patch:
            match = next((i for i, old in enumerate(out) if old.get(key) == item.get(key)), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = merge(out[match], item, None)
        return out
    return copy.deepcopy(patch)


def _set_images(obj, images: list[dict]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "image" and isinstance(value, str):
                name = value.split("@")[0].rsplit(":", 1)[0] if ":" in value.split("/")[-1] else value.split("@")[0]
                for rule in images:
                    if rule["name"] == name:
                        unknown = set(rule) - {"name", "newName", "newTag", "digest"}
                        if unknown:
                            raise RenderError(f"images: unsupported fields {sorted(unknown)}")
                        new = rule.get("newName", name)
                        obj[key] = (
                            f"{new}@{rule['digest']}"
                            if "digest" in rule
                            else (f"{new}:{rule['newTag']}" if "newTag" in rule else new)
                        )
            else:
                _set_images(value, images)
    elif isinstance(obj, list):
        for item in obj:
            _set_images(item, images)


def render(directory: Path, components: list[Path] | None = None) -> list[dict]:
    """The objects `kustomize build directory` would print (with `components` appended to its own)."""
    directory = Path(directory)
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(path.read_text())
    unknown = set(spec) - KNOWN_FIELDS
    if unknown:
        raise RenderError(f"{path}: fields this renderer does not implement: {sorted(unknown)}")
    objects: list[dict] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        objects += render(target) if target.is_dir() else _load(target)
    for comp in [*(directory / c for c in spec.get("components", [])), *(components or [])]:
        objects = _apply(objects, comp.resolve())
    return _transform(objects, spec, directory)


def _apply(objects: list[dict], component: Path) -> list[dict]:
    spec = yaml.safe_load((component / "kustomization.yaml").read_text())
    if spec.get("kind") != "Component":
        raise RenderError(f"{component}: a component needs kind: Component")
    unknown = set(spec) - KNOWN_FIELDS
    if unknown:
        raise RenderError(f"{component}: fields this renderer does not implement: {sorted(unknown)}")
    for entry in spec.get("resources", []):
        objects = objects + _load(component / entry)
    return _transform(objects, {**spec, "resources": []}, component)


def _transform(objects: list[dict], spec: dict, directory: Path) -> list[dict]:
    keys = [_key(o) for o in objects]
    if len(set(keys)) != len(keys):
        raise RenderError(f"{directory}: the same object twice: {sorted(k for k in keys if keys.count(k) > 1)}")
    for entry in spec.get("patches", []):
        if set(entry) != {"path"}:
            raise RenderError(f"{directory}: only `patches: - path: FILE` (strategic merge) is implemented")
        for patch in _load(directory / entry["path"]):
            if _key(patch) not in keys:
                raise RenderError(f"{directory / entry['path']}: no {patch['kind']} {patch['metadata']['name']} to patch")
            i = keys.index(_key(patch))
            objects[i] = merge(objects[i], patch)
    if spec.get("images"):
        objects = copy.deepcopy(objects)
        _set_images(objects, spec["images"])
    return objects
