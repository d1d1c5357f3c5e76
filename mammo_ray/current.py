"""What a study run's stages depend on right now: the config as the stages take it, the manifest as it is on
disk, and the model keys of the configured extractors. Fingerprints, runners and the report read it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from mammo_ray import feature_store, tables
from mammo_ray.config import ExtractorConfig, StudyConfig
from mammo_ray.datasets.manifest import read_manifest
from mammo_ray.errors import ConfigError
from mammo_ray.feature_store import ModelKey
from mammo_ray.models.catalogue import embedding_key, family, heatmaps_key, zero_shot_heatmaps_key, zero_shot_key
from mammo_ray.models.finetune_models import resolve_models, weights_key
from mammo_ray.models.weights_resolver import weights_id
from mammo_ray.privacy import is_locator, with_sources


class CurrentInputs:
    """What the stages of one study run depend on: the manifest as it is on disk now, and the model keys
    of the config (each computed once per run: it hashes weight files)."""

    def __init__(self, config: StudyConfig, locate: Callable[[], Mapping[str, str]] | None = None) -> None:
        """`locate`: where each pseudonymous locator of the manifest really is (rebuilding it from its source),
        asked only when a run reads pseudonymised images without having built the manifest itself."""
        self.config = config
        self.read = config.ingest
        self._keys: dict[str, ModelKey] = {}
        self._manifest: pd.DataFrame | None = None
        self._digests: dict[str, str] = {}
        self._locate = locate
        self._locations: Mapping[str, str] | None = None

    def manifest(self) -> pd.DataFrame:
        """The manifest on disk, read once per run (the manifest stage calls `manifest_written`)."""
        if self._manifest is None:
            self._manifest = read_manifest(tables.manifest_uri(self.config.output))
        return self._manifest

    def manifest_written(self, locations: Mapping[str, str]) -> None:
        """The manifest stage wrote the manifest; `locations`: its locators' real uris (kept in memory only)."""
        self._manifest, self._digests, self._locations = None, {}, dict(locations)

    def readable_manifest(self) -> pd.DataFrame:
        """The manifest as image readers take it: pseudonymised rows with their real uri (privacy.SOURCE_COLUMN),
        for reading only; everything written shows the locators."""
        manifest = self.manifest()
        if not manifest["uri"].map(is_locator).any():
            return manifest
        if self._locations is None:
            if self._locate is None:
                raise ConfigError("data", "the manifest names pseudonymised images, and nothing here can locate "
                                          "them: run the manifest stage")
            self._locations = dict(self._locate())
        return with_sources(manifest, self._locations)

    def digest(self, kind: str) -> str:
        """`manifest` (every column) or `images` (what the image stages depend on) of the current manifest."""
        if kind not in self._digests:
            of = tables.manifest_digest if kind == "manifest" else tables.image_digest
            self._digests[kind] = of(self.manifest())
        return self._digests[kind]

    def embedding_key(self, spec: ExtractorConfig) -> ModelKey:
        if spec.name not in self._keys:
            self._keys[spec.name] = embedding_key(spec, self.read, self.heatmaps_input(spec))
        return self._keys[spec.name]

    def heatmaps_input(self, spec: ExtractorConfig) -> ModelKey | None:
        """The key of the heatmaps an image+heatmaps extractor reads; None for the others."""
        return self.heatmaps_key() if family(spec) == "nyu_heatmaps" else None

    def zero_shot_key(self) -> ModelKey:
        if "zero_shot" not in self._keys:
            self._keys["zero_shot"] = zero_shot_key(self.config.zero_shot, self.read)
        return self._keys["zero_shot"]

    def zero_shot_heatmaps_key(self) -> ModelKey | None:
        """The key of the zero-shot image+heatmaps model's probabilities; None when it is not asked for."""
        if self.config.zero_shot.heatmaps_weights is None:
            return None
        if "zero_shot_heatmaps" not in self._keys:
            self._keys["zero_shot_heatmaps"] = zero_shot_heatmaps_key(self.config.zero_shot, self.read,
                                                                      self.heatmaps_key())
        return self._keys["zero_shot_heatmaps"]

    def heatmaps_key(self) -> ModelKey:
        if "heatmaps" not in self._keys:
            self._keys["heatmaps"] = heatmaps_key(self.config.heatmaps, self.read)
        return self._keys["heatmaps"]

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
        weights = {weights_key(m): weights_id(m.spec) for m in resolve_models(self.config.finetune)}
        inputs: dict[str, Any] = {"manifest": self.digest("manifest"), "weights": weights}
        if self.read.allow_modalities:  # they decide which images it trains on (only when set: older runs stay current)
            inputs["allow_modalities"] = list(self.read.allow_modalities)
        return inputs

