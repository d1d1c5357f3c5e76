"""What a study run's stages depend on right now: the config as the stages take it, the manifest as it is on
disk, and the model keys of the configured extractors. Fingerprints, runners and the report read it."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mammo_ray import feature_store, tables
from mammo_ray.config import ExtractorConfig, StudyConfig
from mammo_ray.datasets.manifest import read_manifest
from mammo_ray.feature_store import ModelKey
from mammo_ray.stages.embed import embedding_key
from mammo_ray.stages.zero_shot import zero_shot_key


class CurrentInputs:
    """What the stages of one study run depend on: the manifest as it is on disk now, and the model keys
    of the config (each computed once per run: it hashes weight files)."""

    def __init__(self, config: StudyConfig) -> None:
        self.config = config
        self.read = config.ingest
        self._keys: dict[str, ModelKey] = {}
        self._manifest: pd.DataFrame | None = None
        self._digests: dict[str, str] = {}

    def manifest(self) -> pd.DataFrame:
        """The manifest on disk, read once per run (the manifest stage calls `manifest_written`)."""
        if self._manifest is None:
            self._manifest = read_manifest(tables.manifest_uri(self.config.output))
        return self._manifest

    def manifest_written(self) -> None:
        self._manifest, self._digests = None, {}

    def digest(self, kind: str) -> str:
        """`manifest` (every column) or `images` (what the image stages depend on) of the current manifest."""
        if kind not in self._digests:
            of = tables.manifest_digest if kind == "manifest" else tables.image_digest
            self._digests[kind] = of(self.manifest())
        return self._digests[kind]

    def embedding_key(self, spec: ExtractorConfig) -> ModelKey:
        if spec.name not in self._keys:
            self._keys[spec.name] = embedding_key(spec, self.read)
        return self._keys[spec.name]

    def zero_shot_key(self) -> ModelKey:
        if "zero_shot" not in self._keys:
            self._keys["zero_shot"] = zero_shot_key(self.config.zero_shot, self.read)
        return self._keys["zero_shot"]

    def grid_inputs(self) -> dict[str, Any]:
        """What the grid's numbers describe: the whole manifest (labels, patients) and, per extractor, its
        model key and the index of its embeddings (which content each image had)."""
        embeddings = {}
        for spec in self.config.grid_extractors:
            table = tables.embeddings_uri(self.config.output, spec.name)
            embeddings[spec.name] = {"key": self.embedding_key(spec).as_dict(),
                                     "index": feature_store.index_digest(table)}
        return {"manifest": self.digest("manifest"), "embeddings": embeddings}

    def finetune_inputs(self) -> dict[str, Any]:
        from mammo_ray.models.weights import weights_id
        from mammo_ray.stages.finetune import resolve_models, weights_key

        weights = {weights_key(m): weights_id(m.spec) for m in resolve_models(self.config.finetune)}
        return {"manifest": self.digest("manifest"), "weights": weights}

