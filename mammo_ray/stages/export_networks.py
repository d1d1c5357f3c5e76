"""The export_networks stage (docs/design.md, "Model packages"): each fine-tuned binary network's final stage as
a package under `<output>/networks/<name>/`: its state dict in safetensors (no code), the fine-tuning's
preprocessing at that stage's size, its held-out validation performance and a model card. `mammo-ray score`
runs it on new images (stages.network_task). Packages of earlier inputs are removed first.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save

from mammo_ray import __version__, storage, tables
from mammo_ray.current_tables import read_current
from mammo_ray.packages.card import card_files
from mammo_ray.packages.files import NETWORK_FILE, NETWORK_KIND, sha256_hex, write_package
from mammo_ray.stages.network_task import NetworkSpec, NetworkTask
from mammo_ray.stages.stage import Counts, Stage, tables_missing
from mammo_ray.training.models import input_family

if TYPE_CHECKING:  # pragma: no cover
    from mammo_ray.current import CurrentInputs  # types only: stages are above the current inputs' module

log = logging.getLogger("mammo_ray.export")
NAME = "export_networks"
#: The fine-tuning's positive class of the binary task (training.data.task_frame).
POSITIVE = "1"
_PERFORMANCE = ("auroc", "auroc_ci_low", "auroc_ci_high", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
                "precision", "recall", "recall_ci_low", "recall_ci_high", "n_train", "n_val", "epochs", "protocol")


def package_name(row: pd.Series) -> str:
    """<model>[-<variant>]-<pretrained_on>-<task>: one package per fine-tuned network."""
    return "-".join(str(part) for part in (row["model"], row["variant"], row["pretrained_on"], row["task"]) if part)


def _safetensors(checkpoint_uri: str) -> bytes:
    state = torch.load(io.BytesIO(storage.read_bytes(storage.join(checkpoint_uri, "model.pt"))), map_location="cpu",
                       weights_only=True)
    return save({name: tensor.contiguous() for name, tensor in state.items()})


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value.item() if hasattr(value, "item") else value


def export_networks(current: CurrentInputs) -> list[str]:
    """Write a package for the final stage of every current binary fine-tuning run; their names."""
    config, manifest = current.config, current.manifest()
    storage.remove(tables.networks_uri(config.output), recursive=True)
    rows, _ = read_current(tables.finetune_uri(config.output), current.finetune_inputs())
    if rows is None:
        return []
    binary = rows[rows["task"] == "binary"]
    runs = ["model", "variant", "pretrained_on", "task", "protocol"]
    finals = binary.sort_values("stage_index").groupby(runs, dropna=False).tail(1)
    labelled = manifest[manifest["label"].notna()]
    names = []
    for _, row in finals.iterrows():
        name = package_name(row)
        uri = tables.networks_uri(config.output, name)
        network = _safetensors(str(row["checkpoint_uri"]))
        classes = [str(c) for c in row["classes"]]
        spec = NetworkSpec(name, str(row["model"]), input_family(str(row["model"])), str(row["variant"] or ""),
                           len(classes), classes.index(POSITIVE),
                           int(row["image_size"]), config.finetune.crop_to_breast, config.finetune.source_resolution,
                           storage.join(uri, NETWORK_FILE), sha256_hex(network))
        task = NetworkTask(spec)
        storage.write_bytes(spec.weights, network)  # first: the key hashes the file as stored
        key = task.key(current.read)
        description = {
            "name": name, "kind": NETWORK_KIND, "created_by": f"mammo-ray {__version__}",
            "network": {"model": spec.model, "input_family": spec.input_family, "variant": spec.variant,
                        "num_classes": spec.num_classes,
                        "positive": spec.positive, "size": spec.size, "crop_to_breast": spec.crop_to_breast,
                        "source_resolution": spec.source_resolution, "classes": classes,
                        "stage": str(row["stage"]), "model_id": task.model_id},
            "model_key": key.as_dict(), "threshold": 0.5, "calibration": "none (the network's softmax)",
            "extractor": {"name": spec.model, "family": "fine-tuned network", "architecture": spec.model,
                          "weights": None, "weights_id": key.weights_id,
                          "pretrained_on": [] if row["pretrained_on"] == "none" else [str(row["pretrained_on"])],
                          "pretraining_group": "none" if row["pretrained_on"] == "none" else "unknown",
                          "pretraining_modality": str(row["pretrained_on"]), "licence": "-",
                          "initial_weights_id": str(row["weights_id"])},
            "training": {"manifest_digest": current.digest("manifest"), "images": int(row["n_train"]),
                         "positives": None, "patients": None, "unlabelled_left_out": None,
                         "datasets": sorted(map(str, labelled["dataset"].dropna().unique())),
                         "views": sorted(map(str, labelled["view"].dropna().unique())),
                         "lateralities": sorted(map(str, labelled["laterality"].dropna().unique())),
                         "label_definition": "the manifest's label column (binary task)", "study": config.name},
            "performance": {"evaluation": f"held-out validation split (protocol {row['protocol']}), the final "
                                          "stage's checkpoint", **{k: _plain(row[k]) for k in _PERFORMANCE}},
            "control": {}, "subgroups": [],
        }
        written = write_package(uri, description, {NETWORK_FILE: network, **card_files(description)})
        names.append(name)
        log.info("export: %s (%s, %d px) -> %s, package %s", name, row["stage"], spec.size, uri,
                 written["package_id"])
    return names


def _run(current: CurrentInputs) -> Counts:
    return {"networks_exported": len(export_networks(current))}


STAGE = Stage(NAME, lambda current: current.finetune_inputs(), run=_run, sections=("finetune",),
              reads=(tables.MANIFEST, tables.FINETUNE, tables.CHECKPOINTS), writes=(tables.NETWORKS,),
              outputs_missing=tables_missing())  # none exported is a finished export


__all__ = ["NAME", "STAGE", "export_networks", "package_name"]
