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
BEST = " (best)"  # the suffix of a side chosen as the best after the fact (classify.comparisons)
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


def comparison_numbers(row: pd.Series, grid: pd.DataFrame, control_of: str = "a") -> str:
    """One comparison's numbers in words: the estimates, the interval, the adjusted p, the control (of the
    pipeline of side `control_of`)."""
    a, b = row["a"], row["b"]
    controlled = str(row[control_of]).removesuffix(BEST)
    return (f"{a} AUC {row['auc_a']:.3f} vs {b} {row['auc_b']:.3f} on {int(row['n_images'])} images: "
            f"difference {row['difference']:+.3f} (95% CI {row['ci_low']:+.3f} to {row['ci_high']:+.3f}, "
            f"Holm-adjusted DeLong p = {row['holm_p']:.3g}; {_null(grid, row, controlled)})")


def comparison_conclusion(row: pd.Series) -> str:
    """What one comparison allows to say (the weights aside)."""
    crosses = row["ci_low"] <= 0.0 <= row["ci_high"]
    if crosses or not row["holm_p"] < ALPHA:
        return "no conclusion: " + ("the interval crosses zero" if crosses else f"the adjusted p is not below {ALPHA}")
    return f"{row['a'] if row['difference'] > 0 else row['b']} is better on these images"


def question_paragraphs(question: str, rows: pd.DataFrame, grid: pd.DataFrame, random_init: bool = False,
                        control_of: str = "a") -> list[str]:
    """The question with its answer, then one line per comparison. `random_init`: weights outside the grid's
    (the fine-tuned models') are random-init."""
    extractors = sorted({str(name).removesuffix(BEST) for name in set(rows["a"]) | set(rows["b"])})
    if random_init or _random_init(grid, extractors):
        answer = ("No conclusion: the weights are random-init, so the numbers below say nothing about what "
                  "pretraining transfers.")
        lines = [f"- {comparison_numbers(row, grid, control_of)}." for _, row in rows.iterrows()]
    else:
        found = [comparison_conclusion(row) for _, row in rows.iterrows()]
        wins = [(row["a"], row["b"]) if row["difference"] > 0 else (row["b"], row["a"])
                for (_, row), conclusion in zip(rows.iterrows(), found, strict=True)
                if not conclusion.startswith("no conclusion")]
        answer = ("The numbers conclude: " + "; ".join(f"{winner} beats {loser}" for winner, loser in wins) + "."
                  if wins else "No conclusion: no comparison's interval excludes zero at an adjusted p below 0.05.")
        lines = [f"- {comparison_numbers(row, grid, control_of)}: {conclusion}." for (_, row), conclusion
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


def _transfer_paragraphs(question: str, transfer: pd.DataFrame | None, finetune: pd.DataFrame | None,
                         grid: pd.DataFrame) -> list[str]:
    if transfer is None or transfer.empty:
        return [f"{question} Not answered: it needs results/finetune_vs_frozen.parquet (the transfer stage, after "
                "the grid and fine-tuning, on the current inputs)."]
    weights = [] if finetune is None or "weights_id" not in finetune else list(finetune["weights_id"].astype(str))
    paragraphs = question_paragraphs(question, transfer, grid, any(w.startswith("random-init") for w in weights),
                                     control_of="b")
    paragraphs.append(
        f"Each fine-tuned network is scored on its validation images ({int(transfer['n_images'].max())} at most) "
        "against its own frozen features under the compare pipeline, scored out of fold on the same images; the "
        f"rows marked{BEST} pick the best of each side after the fact on these images, so they are optimistic.")
    return paragraphs


def verdict_section(grid: pd.DataFrame | None, comparisons: pd.DataFrame | None,
                    transfer: pd.DataFrame | None = None, finetune: pd.DataFrame | None = None) -> Section:
    """The verdict: one paragraph per question of the paper, each sentence from the numbers. `transfer`:
    results/finetune_vs_frozen.parquet; `finetune`: results/finetune.parquet (its weights ids)."""
    section = Section("Verdict: the paper's three questions")
    if grid is None or comparisons is None or comparisons.empty:
        section.paragraphs.append("No verdict: it needs the grid's paired extractor comparisons "
                                  "(results/comparisons.parquet), and the grid has not produced them.")
        return section
    for question, rows in _questions(comparisons):
        if question.startswith("2."):
            section.paragraphs.extend(_transfer_paragraphs(question, transfer, finetune, grid))
            continue
        if rows.empty:
            section.paragraphs.append(f"{question} Not answered: this study has no such pair of extractors.")
            continue
        section.paragraphs.extend(question_paragraphs(question, rows, grid))
    return section


__all__ = ["comparison_conclusion", "comparison_numbers", "question_paragraphs", "verdict_section"]
