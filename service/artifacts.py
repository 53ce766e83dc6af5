"""Finding and verifying artifact directories: the manifest against the contract's schema (service/contract.py),
the sha256 of every listed file, and the files the runtime needs. Any problem raises `ArtifactError` naming the
file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import ValidationError

from service.contract import MANIFEST_FILE, REQUIRED_FILES, SCHEMA_VERSION, Manifest

SUPPORTED_SCHEMA = SCHEMA_VERSION  # the one this service reads


class ArtifactError(RuntimeError):
    """An artifact that must not be served; the message names the directory and file."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict:
    """A file's entry in the manifest's `files`: what `load_manifest(verify=True)` checks."""
    return {"sha256": sha256_of(path), "bytes": path.stat().st_size}


def discover(root: str | Path) -> list[Path]:
    """Artifact directories under `root` (or `root` itself when it holds a manifest), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"model directory {root} does not exist")
    if (root / MANIFEST_FILE).is_file():
        return [root]
    found = sorted(p.parent for p in root.glob(f"*/{MANIFEST_FILE}"))
    if not found:
        raise ArtifactError(f"no model artifacts (*/{MANIFEST_FILE}) under {root}")
    return found


def _problem(exc: ValidationError) -> str:
    """The first schema violation, in the words of the earlier key checks ("missing field 'name'")."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"missing field {where!r}"
    return f"field {where!r}: {error['msg']}"


def load_manifest(directory: str | Path, verify: bool = True) -> dict:
    """The manifest as written (extra keys kept), once it satisfies the contract; with `verify`, every listed file is
    there and has the listed sha256."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path}: missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: not a manifest object")
    if manifest.get("schema_version") != SUPPORTED_SCHEMA:
        raise ArtifactError(
            f"{path}: unsupported schema_version {manifest.get('schema_version')!r} (this service reads {SUPPORTED_SCHEMA})"
        )
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise ArtifactError(f"{path}: {_problem(exc)}") from None
    for required in REQUIRED_FILES:
        if required not in manifest["files"]:
            raise ArtifactError(f"{path}: does not list {required}")
    if verify:
        for name, info in manifest["files"].items():
            file = directory / name
            if not file.is_file():
                raise ArtifactError(f"{file}: listed in the manifest but missing")
            if sha256_of(file) != info.get("sha256"):
                raise ArtifactError(f"{file}: sha256 does not match the manifest (corrupt or modified file)")
    return manifest
