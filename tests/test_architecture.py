"""The import rules of docs/ARCHITECTURE.md, checked on the source (ast) and in a fresh interpreter.

Data flows one way, training -> exported/ -> service: serving never imports training code or torch; training
reaches into service/ only for the artifact contract and the tokenizer (and, in the evaluation tools, the
runtime that scores artifacts as served); only the HTTP layer imports the web framework; service modules import
each other without cycles.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Modules that speak HTTP: the app, its routes, middleware and error shape, and the servers that run them.
HTTP_LAYER = {
    "service.app",
    "service.errors",
    "service.server",
    "service.http_limits",
    "service.security_headers",
    "service.tracing",
    "service.metrics",
    "service.auth",
    "service.reload",
    "service.ray_serve",
    "service.workers",
    "service.docs",
    "service.fast_lane",
}
WEB_FRAMEWORK = ("fastapi", "starlette", "uvicorn")
TRAINING_ONLY = ("training", "torch", "onnx", "gensim", "sklearn")  # `onnx` is the train extra; onnxruntime is not
# What training may use from service/: the contract, the tokenizer and artifact checks on the export path; the
# runtime only where a tool scores artifacts exactly as they are served.
TRAINING_MAY_IMPORT = {"service", "service.contract", "service.tokenization", "service.artifacts"}
SCORES_AS_SERVED = {"training.evaluate", "training.faithfulness", "training.quantize"}


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path) -> set[str]:
    """Absolute module names `path` imports anywhere in it (`from a import b` counts as a and a.b: b may be a
    module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _root_in(name: str, roots: tuple[str, ...]) -> bool:
    return name.split(".")[0] in roots


SERVICE, TRAINING = _modules("service"), _modules("training")


def test_serving_never_imports_training_code_or_torch():
    found = {m: sorted(n for n in _imports(p) if _root_in(n, TRAINING_ONLY)) for m, p in SERVICE.items()}
    assert {m: names for m, names in found.items() if names} == {}


def test_only_the_http_layer_imports_the_web_framework():
    def http(module: str) -> bool:
        return module in HTTP_LAYER or module == "service.routes" or module.startswith("service.routes.")

    found = {m: sorted(n for n in _imports(p) if _root_in(n, WEB_FRAMEWORK)) for m, p in SERVICE.items() if not http(m)}
    assert {m: names for m, names in found.items() if names} == {}


def test_training_uses_only_the_contract_side_of_service():
    bad = {}
    for module, path in TRAINING.items():
        allowed = TRAINING_MAY_IMPORT | ({"service.runtime"} if module in SCORES_AS_SERVED else set())
        names = sorted(
            n
            for n in _imports(path)
            if n.startswith("service")
            and n not in allowed
            and not (
                n.startswith("service.contract.")
                or n.startswith("service.artifacts.")
                or n.startswith("service.tokenization.")
                or n.startswith("service.runtime.")
                and module in SCORES_AS_SERVED
            )
        )
        if names:
            bad[module] = names
    assert bad == {}


def test_service_modules_import_each_other_without_cycles():
    """Imports inside functions count too: a lazy import that closes a loop (the batch CLI and the Ray engine once
    imported each other) still ties the two modules together."""
    graph = {m: {n for n in _imports(p) if n in SERVICE and n != m} for m, p in SERVICE.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_service_module_is_over_400_lines():
    long = {m: n for m, p in SERVICE.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}


@pytest.mark.parametrize("module", ["service.app", "service.batch.cli", "service.runtime"])
def test_importing_the_service_loads_neither_torch_nor_training(module):
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'onnx', 'gensim')); "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{module} loaded {proc.stdout.strip()}{proc.stderr[-2000:]}"


def test_the_batch_cli_does_not_load_the_web_framework():
    code = (
        "import sys, service.batch.cli; bad = [m for m in ('fastapi', 'starlette') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"service.batch.cli loaded {proc.stdout.strip()}{proc.stderr[-2000:]}"
