"""The report's provenance: which data, counts, weights, versions and config the numbers come from, and the
banner shown when any weights are random-init."""

from __future__ import annotations

import pandas as pd

from mammo_ray import __version__
from mammo_ray.report.render import Section

RANDOM_INIT_BANNER = (
    "{which} weights are random-init (no pretrained file was used): these numbers show that the pipeline "
    "works, not how pretrained models transfer. See weights_id in every table."
)


def random_init_banner(weights: list[str]) -> str | None:
    """The banner that opens the report when some or all `weights` ids are random-init; None otherwise."""
    random_init = [w.startswith("random-init") for w in weights]
    return RANDOM_INIT_BANNER.format(which="All" if all(random_init) else "Some") if any(random_init) else None


def _versions() -> str:
    # Ray and torch are heavy: imported here, for their versions, only when a report is written.
    import ray
    import sklearn
    import torch

    return (f"mammo-ray {__version__}, ray {ray.__version__}, torch {torch.__version__}, "
            f"scikit-learn {sklearn.__version__}")


def provenance_section(output_uri: str, study: str, config_hash: str, manifest: pd.DataFrame | None,
                       weights: list[str], errors: pd.DataFrame | None,
                       extractors: pd.DataFrame | None = None) -> Section:
    """The study (its name, config hash, output, versions, weights ids), the manifest's counts, the images
    the configured stages could not read, and each extractor's pretraining and licence (`extractors`)."""
    rows = [("study", study), ("config hash", config_hash), ("output", output_uri), ("versions", _versions()),
            ("weights ids", ", ".join(weights) or "none")]
    if manifest is not None:
        labels = manifest["label"].value_counts(dropna=False)
        rows += [
            ("datasets", ", ".join(sorted(manifest["dataset"].unique()))),
            ("images", str(len(manifest))),
            ("patients", str(manifest["patient_id"].nunique())),
            ("labels (1 / 0 / none)", f"{int(labels.get(1, 0))} / {int(labels.get(0, 0))} / "
                                      f"{int(manifest['label'].isna().sum())}"),
        ]
    if errors is not None and len(errors):
        per_stage = errors.groupby("stage").size()
        rows.append(("images with errors", ", ".join(f"{stage}: {n}" for stage, n in per_stage.items())))
    section = Section("Provenance", tables=[("Study", pd.DataFrame(rows, columns=["item", "value"]))])
    if extractors is not None and len(extractors):
        section.tables.append(("Extractors: what each was pretrained on, and its licence", extractors))
        flagged = extractors[extractors["external"] != "yes"]
        if len(flagged):
            section.paragraphs.append(
                f"Not external: {', '.join(flagged['extractor'])} were pretrained on a collection this study tests "
                "on (acknowledged in the config): their rows measure a model on data it has seen.")
        restricted = extractors[extractors["licence"].str.contains("non-commercial", case=False)]
        if len(restricted):
            section.paragraphs.append(f"Non-commercial licence: the numbers of {', '.join(restricted['extractor'])} "
                                      "come from weights whose licence forbids commercial use.")
    return section
