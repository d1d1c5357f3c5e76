"""The verdict opening the report: a built-in better extractor is named; random-init weights conclude nothing."""

from __future__ import annotations

import numpy as np

from mammo_ray.classify import GridData, evaluate_cells
from mammo_ray.config import GridConfig
from mammo_ray.report.verdict import verdict_section
from mammo_ray.stages.grid import comparisons_table, predictions_table, results_table


def _study(weights: str) -> tuple:
    """Two extractors of the same 240 images (60 patients): nyu_avg carries signal, imagenet_resnet50 little."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 4)
    y = (rng.random(60) < 0.3).repeat(4).astype(np.int8)
    images = tuple(f"img{i:03d}" for i in range(240))
    datasets = {}
    for name, signal in (("nyu_avg", 1.2), ("imagenet_resnet50", 0.1)):
        X = rng.standard_normal((240, 30)).astype(np.float32)
        X[:, :3] += signal * y[:, None]
        datasets[name] = GridData(name, X, y, groups, weights_ids=(weights,), image_ids=images)
    datasets["nyu_avg+imagenet_resnet50"] = GridData.combine(list(datasets.values()))
    config = GridConfig(protocols=["leak_free"], selection=["none"], balancing=["none"], classifiers=["logreg"],
                        permutations=10, bootstrap=300, oof={"repeats": 2})
    results = [r for data in datasets.values() for r in evaluate_cells(data, config.cells([data.extractor]), config)]
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
    assert "Not answered" in question_2
    # The combination against each part: better than the weak part, worse than the strong one.
    question_3, *lines = answers["3"]
    assert len(lines) == 2 and "nyu_avg+imagenet_resnet50 beats imagenet_resnet50" in question_3


def test_random_init_weights_give_no_conclusion():
    grid, comparisons = _study("random-init:0")
    question_1, line = _answers(verdict_section(grid, comparisons).paragraphs)["1"]
    assert "No conclusion: the weights are random-init" in question_1 and "is better" not in question_1 + line
    assert verdict_section(None, None).paragraphs[0].startswith("No verdict")
