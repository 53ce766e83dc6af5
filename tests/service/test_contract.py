"""service/contract.py, the artifact contract: what export writes is what the service reads; the shipped manifests
(with keys the schema does not name) load; a manifest that breaks the schema is refused naming the field; the
truncation choices and defaults have one definition."""

from __future__ import annotations

import json
import shutil
import typing
from pathlib import Path

import pytest

from service import contract, schemas, settings, tokenization
from service.artifacts import ArtifactError, discover, load_manifest

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_manifests_satisfy_the_contract_and_round_trip():
    for directory in discover(contract.DEFAULT_MODEL_ROOT):
        raw = json.loads((directory / contract.MANIFEST_FILE).read_text())
        manifest = contract.Manifest.model_validate(raw)
        assert manifest.to_dict() == raw  # extra keys (metrics, history, ...) kept, nothing added
        assert set(contract.REQUIRED_FILES) <= set(manifest.files)


def test_what_export_writes_is_what_the_service_reads(tiny_artifact):
    raw = load_manifest(tiny_artifact)
    manifest = contract.Manifest.model_validate(raw)
    assert manifest.to_dict() == raw
    assert manifest.diagnostics is not None and manifest.diagnostics.contribution
    assert set(manifest.files) == {
        contract.MODEL_FILE,
        contract.DIAGNOSTICS_FILE,
        contract.WEIGHTS_FILE,
        contract.TOKENIZER_FILE,
        contract.MODEL_CARD_FILE,
    }


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda m: m.pop("labels"), "missing field 'labels'"),
        (lambda m: m["truncation"].update(strategy="middle"), "field 'truncation.strategy'"),
        (lambda m: m.update(max_tokens=0), "field 'max_tokens'"),
        (lambda m: m.update(schema_version=2), "unsupported schema_version 2"),
        (lambda m: m["files"].pop(contract.DIAGNOSTICS_FILE), "does not list diagnostics.onnx"),
    ],
)
def test_a_manifest_that_breaks_the_contract_is_refused_naming_the_field(tiny_artifact, tmp_path, change, message):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifact, broken)
    raw = json.loads((broken / contract.MANIFEST_FILE).read_text())
    change(raw)
    (broken / contract.MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match=message):
        load_manifest(broken, verify=False)


def test_unknown_keys_are_kept(tiny_artifact, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(tiny_artifact, newer)
    raw = json.loads((newer / contract.MANIFEST_FILE).read_text())
    raw["evaluation"] = {"test_accuracy": 0.9}
    raw["model"]["some_new_architecture_field"] = 7
    (newer / contract.MANIFEST_FILE).write_text(json.dumps(raw))
    loaded = load_manifest(newer, verify=False)
    assert loaded["evaluation"] == {"test_accuracy": 0.9} and loaded["model"]["some_new_architecture_field"] == 7


def test_truncation_choices_and_defaults_have_one_definition():
    assert contract.TRUNCATIONS == ("head", "tail", "head_tail")
    assert tokenization.Truncation is contract.Truncation
    assert schemas.Truncate is contract.Truncation
    assert typing.get_args(schemas.SentimentRequest.model_fields["truncate"].annotation) == (contract.Truncation, type(None))
    assert settings.Settings.model_fields["model_root"].default == contract.DEFAULT_MODEL_ROOT == REPO / "exported"
    pytest.importorskip("torch")
    from training.config import TrainConfig

    assert TrainConfig().truncation in contract.TRUNCATIONS
