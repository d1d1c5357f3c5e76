"""A package's model card (Markdown and JSON), written from its description: what it is for, what it was
trained and pretrained on, how well it did (out of fold and against the negative control for a pipeline, on the
held-out validation split for a fine-tuned network), per subgroup, and what limits it. Facts only from the
description: the card says nothing the package does not hold."""

from __future__ import annotations

import json
from typing import Any

from mammo_ray.classify.subgroups import interval_text

INTENDED_USE = ("Research only: to score mammograms of a collection like the training one, and to study transfer "
                "learning. Not a medical device; not for diagnosis or screening decisions.")
CITATION = ("The study design: 'Low resource breast cancer detection with mammograms' (INbreast transfer-learning "
            "study). The NYU screening model: Wu et al., IEEE TMI 2019. Cite the extractor's own paper as well.")


def _is_network(description: dict[str, Any]) -> bool:
    return "network" in description


def _limitations(description: dict[str, Any]) -> list[str]:
    extractor, training = description["extractor"], description["training"]
    notes = []
    if str(extractor.get("weights") or "").startswith("random-init") or extractor["pretraining_group"] == "none":
        notes.append("No pretrained weights (random-init): the numbers test the machinery, not the method.")
    if extractor["pretraining_group"] == "unknown":
        notes.append("What the weights were pretrained on is not known to the weights registry or the config.")
    if "inbreast" in training["datasets"]:
        notes.append("INbreast labels are BI-RADS proxies (1-3 negative, 4-6 positive), not biopsy outcomes.")
    notes.append(f"Trained on {training['images']} images ({', '.join(training['datasets']) or 'one collection'}); "
                 f"views {', '.join(training['views'])}: other views are not scored, and another scanner or "
                 "population changes what the numbers mean (pipelines: see each scoring run's shift check).")
    kept = description.get("pipeline", {}).get("support_vectors", 0)
    if kept:
        notes.append(f"The classifier keeps {kept} support vectors: standardised embeddings of training images "
                     "(some synthetic, from SMOTE). Share the package as you would share data derived from the "
                     "training patients.")
    p = (description.get("control") or {}).get("permutation_p")
    if _is_network(description):
        notes.append("No negative control ran for fine-tuning; its interval rests on one validation split.")
    elif p is None:
        notes.append("No negative control ran for this pipeline.")
    elif p >= 0.05:
        notes.append(f"The negative control did not reject chance (permutation p = {p:.3g}).")
    return notes


def card_json(description: dict[str, Any]) -> dict[str, Any]:
    """The card's facts as one JSON object."""
    extractor = description["extractor"]
    shape = ({"network": description["network"]} if _is_network(description)
             else {"pipeline": description["pipeline"]})
    return {
        "name": description["name"], "intended_use": INTENDED_USE,
        "model": {"kind": description["kind"], **shape, "threshold": description["threshold"],
                  "calibration": description["calibration"]},
        "extractor": {key: extractor[key] for key in ("name", "family", "architecture", "weights", "weights_id",
                                                      "pretrained_on", "pretraining_group", "pretraining_modality",
                                                      "licence")},
        "training_data": description["training"], "performance": description["performance"],
        "negative_control": description["control"], "subgroups": description["subgroups"],
        "shift_reference": description.get("shift"), "limitations": _limitations(description), "citation": CITATION,
    }


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _interval(group: dict[str, Any]) -> str:
    return (interval_text(group) or "-") + (" (small)" if group["small"] else "")


def _model_lines(model: dict[str, Any], extractor: dict[str, Any]) -> list[str]:
    if "network" in model:
        network = model["network"]
        head = f" ({network['variant']} head)" if network["variant"] else ""
        return [f"- Fine-tuned network {network['model']}{head}: its final stage ({network['stage']}) at "
                f"{network['size']} px, classes {', '.join(network['classes'])}; weights in safetensors (weights_id "
                f"{extractor['weights_id']}).",
                f"- Flag at probability >= {model['threshold']} (the network's softmax, not recalibrated)."]
    pipeline = model["pipeline"]
    architecture = f", {extractor['architecture']}" if extractor["architecture"] else ""
    return [f"- Frozen-feature pipeline ({model['kind']}): scale, selection {pipeline['selection']}, balancing "
            f"{pipeline['balancing']}, classifier {pipeline['classifier']}, fitted on every labelled training image.",
            f"- Decision threshold {model['threshold']:.4g} on the decision score (best balanced accuracy on the "
            f"study's out-of-fold scores); probabilities by {model['calibration']} calibration on the same scores.",
            f"- Extractor {extractor['name']} ({extractor['family']}{architecture}), "
            f"weights {extractor['weights'] or 'file'} (weights_id {extractor['weights_id']})."]


def _performance_lines(performance: dict[str, Any], control: dict[str, Any]) -> list[str]:
    if "auroc" in performance:
        return [f"- AUROC {_number(performance.get('auroc'))} ({_number(performance.get('auroc_ci_low'))} to "
                f"{_number(performance.get('auroc_ci_high'))}, patient bootstrap) on {performance.get('n_val')} "
                f"validation images; accuracy {_number(performance.get('accuracy'))}, sensitivity "
                f"{_number(performance.get('recall'))}. {performance['evaluation']}.",
                "- No negative control ran for fine-tuning."]
    return [f"- AUC {_number(performance.get('auc'))} ({performance.get('interval') or 'interval'} "
            f"{_number(performance.get('auc_ci_low'))} to {_number(performance.get('auc_ci_high'))}); balanced "
            f"accuracy {_number(performance.get('balanced_accuracy'))}, sensitivity "
            f"{_number(performance.get('recall'))}, specificity {_number(performance.get('specificity'))}, Brier "
            f"{_number(performance.get('brier'))}.",
            f"- Breast level AUC {_number(performance.get('auc_breast'))}. {performance['evaluation']}.",
            f"- Negative control (labels permuted between patients): {_number(control.get('permutations'))} reruns, "
            f"null AUC mean {_number(control.get('null_auc_mean'))}, permutation p "
            f"{_number(control.get('permutation_p'))}."]


def card_markdown(card: dict[str, Any]) -> str:
    """The card for a person."""
    extractor, data = card["extractor"], card["training_data"]
    counts = f" ({data['positives']} positive) of {data['patients']} patients" if data.get("patients") else ""
    lines = [
        f"# Model card: {card['name']}", "", "## Intended use", "", card["intended_use"], "", "## Model", "",
        *_model_lines(card["model"], extractor),
        f"- Pretrained on: {', '.join(extractor['pretrained_on']) or 'nothing'} ({extractor['pretraining_modality']}; "
        f"group {extractor['pretraining_group']}). Licence of the weights: {extractor['licence']}.",
        "", "## Training data", "",
        f"- {data['images']} labelled training images{counts}; collections: {', '.join(data['datasets'])}; views "
        f"{', '.join(data['views'])}.",
        f"- Labels: {data['label_definition']}.", f"- Manifest digest {data['manifest_digest']}.",
        "", "## Performance", "", *_performance_lines(card["performance"], card["negative_control"]),
    ]
    if card["subgroups"]:
        lines += ["", "## Subgroups", "", "| subgroup | value | images | patients | AUC | interval |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {g['subgroup']} | {g['value']} | {g['n_images']} | {g['n_patients']} | {_number(g['auc'])} | "
                  f"{_interval(g)} |" for g in card["subgroups"]]
    lines += ["", "## Limitations", "", *[f"- {note}" for note in card["limitations"]],
              "", "## How to cite", "", card["citation"], ""]
    return "\n".join(lines)


def card_files(description: dict[str, Any]) -> dict[str, bytes]:
    """card.json and card.md of a package."""
    card = card_json(description)
    return {"card.json": json.dumps(card, indent=2, sort_keys=True).encode(), "card.md": card_markdown(card).encode()}


__all__ = ["card_files", "card_json", "card_markdown"]
