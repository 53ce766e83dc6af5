"""The models this service serves: every artifact directory under the model root, loaded and verified at start-up
(sha256 of each file, tokenizer vs model input, a warm-up inference: see `ModelRuntime`), and the default model.

Loading is all or nothing: one bad artifact raises `ArtifactError` naming the file, and the server does not start.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.artifacts import ArtifactError, discover, load_manifest
from service.contract import DEFAULT_MODEL_NAME
from service.exceptions import UnknownModel
from service.runtime import ModelRuntime
from service.settings import Settings

log = logging.getLogger("sentiment.registry")


class ModelRegistry:
    def __init__(self, runtimes: list[ModelRuntime], default: str | None = None):
        if not runtimes:
            raise ArtifactError("no models to serve")
        self.runtimes: dict[str, ModelRuntime] = {}
        for rt in runtimes:
            if rt.name in self.runtimes:
                raise ArtifactError(
                    f"{rt.directory / 'manifest.json'}: model name {rt.name!r} is already served "
                    f"from {self.runtimes[rt.name].directory}"
                )
            self.runtimes[rt.name] = rt
        if default is not None and default not in self.runtimes:
            raise ArtifactError(f"default model {default!r} is not among the loaded models ({', '.join(self.runtimes)})")
        # The shipped default (exported/imdb-lstm) when present and no default is configured, else the first by name.
        self.default = default or (DEFAULT_MODEL_NAME if DEFAULT_MODEL_NAME in self.runtimes else min(self.runtimes))

    @staticmethod
    def locate(root, name: str | None = None) -> Path:
        """The artifact directory under `root` (an artifact or a folder of them) that one model name picks, without
        loading anything (the batch CLI loads only that one): a folder or manifest name, else the shipped default
        when present, else the first directory. Raises `ArtifactError` when there is none, `UnknownModel` for a name
        not found."""
        found = discover(root)
        names: dict[str, Path] = {}
        for path in found:
            names[path.name] = path
            try:
                names.setdefault(load_manifest(path, verify=False)["name"], path)
            except ArtifactError:
                pass  # loading it later reports the problem, if this is the one chosen
        if name:
            if name not in names:
                raise UnknownModel(f"no model named {name!r} under {root} (found: {', '.join(sorted(names))})")
            return names[name]
        return names.get(DEFAULT_MODEL_NAME, found[0])

    @staticmethod
    def load_one(directory, settings: Settings) -> ModelRuntime:
        """One artifact directory, verified (checksums, tokenizer vs model, a warm-up inference) as at start-up."""
        return ModelRuntime(
            directory,
            providers=settings.providers or None,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            diagnostics_threads=settings.diagnostics_threads,
        )

    @classmethod
    def load(cls, settings: Settings) -> ModelRegistry:
        runtimes = [cls.load_one(directory, settings) for directory in discover(settings.model_root)]
        registry = cls(runtimes, settings.default_model)
        for rt in registry:
            log.info(
                "serving %s %s on %s%s", rt.name, rt.version, rt.provider, " (default)" if rt.name == registry.default else ""
            )
        return registry

    def __iter__(self):
        return iter(self.runtimes.values())

    def __len__(self) -> int:
        return len(self.runtimes)

    def put(self, rt: ModelRuntime) -> ModelRuntime | None:
        """Serve `rt` under its name from now on (a hot reload, service/reload.py); returns the runtime it replaces."""
        previous = self.runtimes.get(rt.name)
        self.runtimes[rt.name] = rt
        return previous

    def get(self, name: str | None) -> ModelRuntime:
        """The named model (or the default); an unknown name raises `UnknownModel` (the HTTP API's 404)."""
        rt = self.runtimes.get(name or self.default)
        if rt is None:
            raise UnknownModel(f"no model named {name!r} (available: {', '.join(self.runtimes)})")
        return rt
