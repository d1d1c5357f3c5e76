"""The verdict that opens the report: the paper's three questions answered from the numbers, or plainly not.

Each sentence is built from the paired comparisons (difference in AUC, its patient-cluster interval, the
Holm-adjusted DeLong p) and the negative control of the compared pipeline. No conclusion is drawn when
the interval crosses zero, when the adjusted p is not below 0.05, or when the weights are random-init
(then nothing is said about pretraining, whatever the numbers).
"""

from __future__ import annotations

import pandas as pd

from mammo_ray.report.render import Section

NYU = ("nyu_avg", "nyu_lcc")
IMAGENET_PREFIX = "imagenet_"
ALPHA = 0.05


def _is_combined(name: str) -> bool:
    return "+" in name


def _weights(grid: pd.DataFrame, extractor: str) -> list[str]:
    rows = grid[grid["extractor"] == extractor]
    return sorted({w for ids in rows["weights_ids"] for w in (ids if ids is not None else [])})


def _random_init(grid: pd.DataFrame, extractors: list[str]) -> bool:
    return any(w.startswith("random-init") for name in extractors for w in _weights(grid, name))


def _null(grid: pd.DataFrame, row: pd.Series, extractor: str) -> str:
    cell = grid[(grid["extractor"] == extractor) & (grid["protocol"] == "leak_free")
                & (grid["selection"] == row["selection"]) & (grid["balancing"] == row["balancing"])
                & (grid["classifier"] == row["classifier"])]
    if cell.empty or not (cell["permutations"].fillna(0) > 0).any():
        return "no negative control ran"
    first = cell.iloc[0]
    return f"on permuted labels the same pipeline reaches AUC {first['null_auc_mean']:.2f}"


def comparison_numbers(row: pd.Series, grid: pd.DataFrame) -> str:
    """One comparison's numbers in words: the estimates, the interval, the adjusted p, the control."""
    a, b = row["a"], row["b"]
    return (f"{a} AUC {row['auc_a']:.3f} vs {b} {row['auc_b']:.3f} on {int(row['n_images'])} images: "
            f"difference {row['difference']:+.3f} (95% CI {row['ci_low']:+.3f} to {row['ci_high']:+.3f}, "
            f"Holm-adjusted DeLong p = {row['holm_p']:.3g}; {_null(grid, row, a)})")


def comparison_conclusion(row: pd.Series) -> str:
    """What one comparison allows to say (the weights aside)."""
    crosses = row["ci_low"] <= 0.0 <= row["ci_high"]
    if crosses or not row["holm_p"] < ALPHA:
        return "no conclusion: " + ("the interval crosses zero" if crosses else f"the adjusted p is not below {ALPHA}")
    return f"{row['a'] if row['difference'] > 0 else row['b']} is better on these images"


def question_paragraphs(question: str, rows: pd.DataFrame, grid: pd.DataFrame) -> list[str]:
    """The question with its answer, then one line per comparison."""
    extractors = sorted(set(rows["a"]) | set(rows["b"]))
    if _random_init(grid, extractors):
        answer = ("No conclusion: the weights are random-init, so the numbers below say nothing about what "
                  "pretraining transfers.")
        lines = [f"- {comparison_numbers(row, grid)}." for _, row in rows.iterrows()]
    else:
        found = [comparison_conclusion(row) for _, row in rows.iterrows()]
        wins = [(row["a"], row["b"]) if row["difference"] > 0 else (row["b"], row["a"])
                for (_, row), conclusion in zip(rows.iterrows(), found, strict=True)
                if not conclusion.startswith("no conclusion")]
        answer = ("The numbers conclude: " + "; ".join(f"{winner} beats {loser}" for winner, loser in wins) + "."
                  if wins else "No conclusion: no comparison's interval excludes zero at an adjusted p below 0.05.")
        lines = [f"- {comparison_numbers(row, grid)}: {conclusion}." for (_, row), conclusion
                 in zip(rows.iterrows(), found, strict=True)]
    return [f"{question} {answer}", *lines]


def _questions(comparisons: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    pairs = comparisons
    is_nyu = pairs["a"].isin(NYU) | pairs["b"].isin(NYU)
    is_imagenet = pairs["a"].str.startswith(IMAGENET_PREFIX) | pairs["b"].str.startswith(IMAGENET_PREFIX)
    combined = pairs["a"].map(_is_combined) | pairs["b"].map(_is_combined)
    return [
        ("1. Do features of a model pretrained on mammograms (NYU) beat ImageNet features?",
         pairs[is_nyu & is_imagenet & ~combined]),
        ("2. Does fine-tuning a network beat its frozen features under a classifier?", pairs.iloc[0:0]),
        ("3. Do both together (NYU and ImageNet features concatenated) help?", pairs[combined]),
    ]


def verdict_section(grid: pd.DataFrame | None, comparisons: pd.DataFrame | None) -> Section:
    """The verdict: one paragraph per question of the paper, each sentence from the numbers."""
    section = Section("Verdict: the paper's three questions")
    if grid is None or comparisons is None or comparisons.empty:
        section.paragraphs.append("No verdict: it needs the grid's paired extractor comparisons "
                                  "(results/comparisons.parquet), and the grid has not produced them.")
        return section
    for question, rows in _questions(comparisons):
        if question.startswith("2."):
            section.paragraphs.append(
                f"{question} Not answered: fine-tuned models are scored on one held-out split and frozen "
                "features out of fold, so they are not yet compared on the same images.")
            continue
        if rows.empty:
            section.paragraphs.append(f"{question} Not answered: this study has no such pair of extractors.")
            continue
        section.paragraphs.extend(question_paragraphs(question, rows, grid))
    return section


__all__ = ["comparison_conclusion", "comparison_numbers", "question_paragraphs", "verdict_section"]
