"""Finding and verifying artifact directories (the only contract with training): manifest schema, the sha256 of
every listed file, and the files the runtime needs. Any problem raises `ArtifactError` naming the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SUPPORTED_SCHEMA = 1
REQUIRED_FILES = ("model.onnx", "diagnostics.onnx", "tokenizer.json")


class ArtifactError(RuntimeError):
    """An artifact that must not be served; the message names the directory and file."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def discover(root: str | Path) -> list[Path]:
    """Artifact directories under `root` (or `root` itself when it holds a manifest), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"model directory {root} does not exist")
    if (root / "manifest.json").is_file():
        return [root]
    found = sorted(p.parent for p in root.glob("*/manifest.json"))
    if not found:
        raise ArtifactError(f"no model artifacts (*/manifest.json) under {root}")
    return found


def load_manifest(directory: str | Path, verify: bool = True) -> dict:
    directory = Path(directory)
    path = directory / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path}: missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SUPPORTED_SCHEMA:
        raise ArtifactError(f"{path}: unsupported schema_version {manifest.get('schema_version')!r} "
                            f"(this service reads {SUPPORTED_SCHEMA})" if isinstance(manifest, dict)
                            else f"{path}: not a manifest object")
    for key in ("name", "version", "labels", "model", "tokenizer", "max_tokens", "truncation", "files"):
        if key not in manifest:
            raise ArtifactError(f"{path}: missing field {key!r}")
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
