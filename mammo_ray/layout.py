"""Where every table of a study lives under its output URI: the one place stages agree on paths."""

from __future__ import annotations

from mammo_ray import storage


def manifest_uri(output_uri: str) -> str:
    return storage.join(output_uri, "manifest.parquet")


def embeddings_uri(output_uri: str, extractor: str | None = None) -> str:
    return storage.join(output_uri, "embeddings", *([extractor] if extractor else []))


def errors_uri(output_uri: str) -> str:
    return storage.join(output_uri, "errors")


def zero_shot_uri(output_uri: str) -> str:
    return storage.join(output_uri, "zero_shot")


def grid_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "grid.parquet")


def grid_predictions_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "grid_predictions.parquet")


def grid_units_uri(output_uri: str) -> str:
    """The grid's journal: one file per finished Tune trial unit, removed once grid.parquet is written."""
    return storage.join(output_uri, "results", "grid_units")


def finetune_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "finetune.parquet")


def finetune_predictions_uri(output_uri: str) -> str:
    return storage.join(output_uri, "results", "finetune_predictions.parquet")


def report_uri(output_uri: str) -> str:
    return storage.join(output_uri, "report")
