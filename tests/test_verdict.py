"""The verdict opening the report: a built-in better extractor is named; random-init weights conclude nothing."""

from __future__ import annotations

import numpy as np

from mammo_ray.classify import GridData, evaluate_cells
from mammo_ray.classify.cells import compare_pipeline, grid_cells
from mammo_ray.config import GridConfig
from mammo_ray.report.verdict import verdict_section
from mammo_ray.stages.grid import comparisons_table, predictions_table, results_table


def _two_extractors(rng: np.random.Generator, y: np.ndarray, groups: np.ndarray, images: tuple,
                    weights: str) -> dict[str, GridData]:
    """nyu_avg carries signal (three features shifted 1.2 SD by the label), imagenet_resnet50 little (0.1)."""
    datasets = {}
    for name, signal in (("nyu_avg", 1.2), ("imagenet_resnet50", 0.1)):
        X = rng.standard_normal((240, 30)).astype(np.float32)
        X[:, :3] += signal * y[:, None]
        datasets[name] = GridData(name, X, y, groups, weights_ids=(weights,), image_ids=images)
    return datasets


def _study(weights: str) -> tuple:
    """Two extractors of the same 240 images (60 patients): nyu_avg carries signal, imagenet_resnet50 little."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 4)
    y = (rng.random(60) < 0.3).repeat(4).astype(np.int8)
    images = tuple(f"img{i:03d}" for i in range(240))
    datasets = _two_extractors(rng, y, groups, images, weights)
    datasets["nyu_avg+imagenet_resnet50"] = GridData.combine(list(datasets.values()))
    return _grid_and_comparisons(datasets)


def _grid_and_comparisons(datasets: dict[str, GridData]) -> tuple:
    """The grid and comparisons tables of `datasets` under one leak_free logistic-regression pipeline."""
    config = GridConfig(protocols=["leak_free"], selection=["none"], balancing=["none"], classifiers=["logreg"],
                        permutations=10, bootstrap=300, oof={"repeats": 2})
    results = [r for data in datasets.values()
               for r in evaluate_cells(data, grid_cells(config, [data.extractor]), config)]
    grid = results_table(results, config, {name: data.weights_ids for name, data in datasets.items()}).to_pandas()
    comparisons = comparisons_table(predictions_table(results, datasets).to_pandas(), datasets, config).to_pandas()
    return grid, comparisons


def _answers(paragraphs: list[str]) -> dict[str, list[str]]:
    """Question number -> [the question with its answer, one line per comparison]."""
    answers: dict[str, list[str]] = {}
    for paragraph in paragraphs:
        if paragraph[:2] in ("1.", "2.", "3."):
            answers[paragraph[0]] = [paragraph]
        else:
            answers[list(answers)[-1]].append(paragraph)
    return answers


def test_the_verdict_names_the_better_extractor_when_the_weights_are_real():
    grid, comparisons = _study("sha256:0123abcd")
    answers = _answers(verdict_section(grid, comparisons).paragraphs)
    (question_1, line), (question_2,) = answers["1"], answers["2"]
    assert question_1.endswith("The numbers conclude: nyu_avg beats imagenet_resnet50.")
    assert line.startswith("- nyu_avg AUC") and "Holm-adjusted DeLong p" in line
    assert "on permuted labels the same pipeline reaches AUC" in line and line.endswith("is better on these images.")
    assert "Not answered" in question_2  # no transfer table given
    # The combination against each part: better than the weak part, worse than the strong one.
    question_3, *lines = answers["3"]
    assert len(lines) == 2 and "nyu_avg+imagenet_resnet50 beats imagenet_resnet50" in question_3


def test_random_init_weights_give_no_conclusion():
    grid, comparisons = _study("random-init:0")
    question_1, line = _answers(verdict_section(grid, comparisons).paragraphs)["1"]
    assert "No conclusion: the weights are random-init" in question_1 and "is better" not in question_1 + line
    assert verdict_section(None, None).paragraphs[0].startswith("No verdict")


def _transfer(weights: str, tuned_signal: float) -> tuple:
    """The grid of _study plus a fine-tuned resnet50 scored on a patient-grouped validation split of 80 images
    (20 patients): its P(malignant) carries `tuned_signal`; the frozen imagenet_resnet50 features carry little."""
    import pandas as pd

    from mammo_ray.classify.comparisons import finetuned_vs_frozen
    from mammo_ray.classify.selection import select_inside

    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(60), 4)
    y = (np.random.default_rng(0).random(60) < 0.3).repeat(4).astype(np.int8)
    images = tuple(f"img{i:03d}" for i in range(240))
    datasets = _two_extractors(rng, y, groups, images, weights)
    config = GridConfig(protocols=["leak_free"], selection=["none"], balancing=["none"],
                        classifiers=["logreg", "svm_linear"], permutations=5, bootstrap=300, oof={"repeats": 2})
    results = [r for data in datasets.values()
               for r in evaluate_cells(data, grid_cells(config, [data.extractor]), config)]
    results += select_inside(results, datasets, config)
    grid = results_table(results, config, {name: data.weights_ids for name, data in datasets.items()}).to_pandas()
    predictions = predictions_table(results, datasets).to_pandas()
    comparisons = comparisons_table(predictions, datasets, config).to_pandas()
    val = np.arange(160, 240)  # the last 20 patients
    p = 1.0 / (1.0 + np.exp(-(tuned_signal * (2 * y[val] - 1) + rng.standard_normal(val.size))))
    tuned = pd.DataFrame({"model": "resnet50", "pretrained_on": "imagenet", "task": "binary", "protocol": "patient",
                          "stage": "all", "image_id": [images[i] for i in val],
                          "patient_id": [f"p{groups[i]}" for i in val], "target": y[val].astype(int),
                          "prediction": (p > 0.5).astype(int), "probabilities": [[1 - q, q] for q in p]})
    rows = pd.DataFrame({"model": ["resnet50", "resnet50"], "task": "binary", "stage": ["head", "all"],
                         "stage_index": [0, 1], "auroc": [0.6, 0.9], "weights_id": weights})
    transfer = finetuned_vs_frozen(rows, tuned, predictions, compare_pipeline(config), 500, 0.95, 0)
    return grid, comparisons, transfer, rows


def test_fine_tuning_is_compared_with_its_own_frozen_features_on_the_same_images():
    grid, comparisons, transfer, rows = _transfer("sha256:0123abcd", tuned_signal=3.0)
    own = transfer.set_index("a").loc["finetuned:resnet50"]
    assert own["b"] == "imagenet_resnet50" and own["n_images"] == 80  # the validation images only
    assert (own["selection"], own["balancing"], own["classifier"]) == ("none", "none", "svm_linear")  # grid.compare
    assert own["difference"] > 0.2 and own["ci_low"] > 0 and own["holm_p"] < 0.05
    best = transfer.set_index("a").loc["finetuned:resnet50 (best)"]
    assert best["b"] == "nyu_avg (best)" and best["selection"] == "selected"  # the strongest frozen row
    assert (transfer["holm_p"] >= transfer["delong_p"]).all()
    question, *lines = _answers(verdict_section(grid, comparisons, transfer, rows).paragraphs)["2"]
    assert "finetuned:resnet50 beats imagenet_resnet50" in question
    assert any(line.startswith("- finetuned:resnet50 AUC") and "permuted labels" in line for line in lines)
    assert "optimistic" in lines[-1]
    # Random-init fine-tuning weights: no conclusion, whatever the numbers.
    rows = rows.assign(weights_id="random-init:0")
    question, *_ = _answers(verdict_section(grid, comparisons, transfer, rows).paragraphs)["2"]
    assert "No conclusion: the weights are random-init" in question


def test_the_first_question_compares_the_best_of_each_pretraining_group_on_the_same_images():
    """Three groups: two mammography extractors (the better one stands for the group, marked as picked after the
    fact), one other-medical, one natural-images; the built-in better group is named, the others' pairs are
    there with their numbers, and random-init extractors are listed but not compared."""
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(60), 4)
    y = (rng.random(60) < 0.3).repeat(4).astype(np.int8)
    images = tuple(f"img{i:03d}" for i in range(240))
    signals = {"mammo_clip_b5": 1.4, "nyu_avg": 0.5, "radimagenet": 0.1, "imagenet_resnet50": 0.0, "scratch": 1.4}
    datasets = {}
    for name, signal in signals.items():
        X = rng.standard_normal((240, 30)).astype(np.float32)
        X[:, :3] += signal * y[:, None]
        weights = "random-init:0" if name == "scratch" else f"sha256:{name}"
        datasets[name] = GridData(name, X, y, groups, weights_ids=(weights,), image_ids=images)
    grid, comparisons = _grid_and_comparisons(datasets)
    pretraining = {"mammo_clip_b5": "mammography", "nyu_avg": "mammography", "radimagenet": "other medical",
                   "imagenet_resnet50": "natural images", "scratch": "none"}

    question, *lines, listing = verdict_section(grid, comparisons, groups=pretraining).paragraphs[:5]
    assert question.startswith("1. Do features of models pretrained on mammograms beat")
    assert "mammo_clip_b5 (best) beats imagenet_resnet50" in question
    assert [line.split(" AUC")[0] for line in lines] == [
        "- mammo_clip_b5 (best)", "- mammo_clip_b5 (best)", "- radimagenet"]  # group pairs, vocabulary order
    assert "vs radimagenet" in lines[0] and "vs imagenet_resnet50" in lines[1] and "vs imagenet_resnet50" in lines[2]
    assert all("Holm-adjusted DeLong p" in line and "on permuted labels" in line for line in lines)
    assert listing.startswith("Pretraining groups of this study's extractors: mammography: mammo_clip_b5, nyu_avg; "
                              "other medical: radimagenet; natural images: imagenet_resnet50; none: scratch.")
    assert "picked after the fact" in listing
    # The numbers are the table's whichever way it holds a pair: the same table with every pair reversed (sides,
    # AUCs, sign, interval) reads the same.
    reversed_pairs = comparisons.rename(columns={"a": "b", "b": "a", "auc_a": "auc_b", "auc_b": "auc_a",
                                                 "ci_low": "ci_high", "ci_high": "ci_low"})
    reversed_pairs[["difference", "ci_low", "ci_high"]] *= -1
    assert verdict_section(grid, reversed_pairs, groups=pretraining).paragraphs[:5] == [question, *lines, listing]

    # One pretrained group only (the others random-init or unknown): the paper's own NYU vs ImageNet pairs.
    only_one = {name: "none" for name in pretraining} | {"nyu_avg": "mammography"}
    assert verdict_section(grid, comparisons, groups=only_one).paragraphs[0].startswith(
        "1. Do features of a model pretrained on mammograms (NYU) beat ImageNet features?")
