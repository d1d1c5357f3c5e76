"""The verdict that opens the report: the paper's three questions answered from the numbers, or plainly not.

Each sentence is built from the paired comparisons (difference in AUC, its patient-cluster interval, the
Holm-adjusted DeLong p) and the negative control of the compared pipeline. No conclusion is drawn when
the interval crosses zero, when the adjusted p is not below 0.05, or when the weights are random-init
(then nothing is said about pretraining, whatever the numbers).

The first question is asked of pretraining groups (mammography, other medical, natural images: the weights
registry's or the config's): the best extractor of each group under the compare pipeline, compared pair by pair
on the same images. Where fewer than two groups have pretrained extractors, it falls back to the paper's own
pairs (an NYU extractor against an ImageNet one).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

import pandas as pd

from mammo_ray.report.render import Section, format_p
from mammo_ray.vocabulary import PRETRAINING_GROUPS

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
            f"Holm-adjusted DeLong p = {format_p(row['holm_p'])}; {_null(grid, row, controlled)})")


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


#: The pretraining groups the first question compares (random-init and unknown weights say nothing about it).
COMPARED_GROUPS = tuple(group for group in PRETRAINING_GROUPS if group not in ("none", "unknown"))
GROUPS_QUESTION = ("1. Do features of models pretrained on mammograms beat those of models pretrained on other "
                   "images (the best extractor of each pretraining group, on the same images)?")


def _compare_auc(grid: pd.DataFrame, comparisons: pd.DataFrame, extractor: str) -> float:
    """The extractor's out-of-fold AUC under the compare pipeline (the comparisons' pipeline), leak_free."""
    pipeline = comparisons.iloc[0]
    cell = grid[(grid["extractor"] == extractor) & (grid["protocol"] == "leak_free")
                & (grid["selection"] == pipeline["selection"]) & (grid["balancing"] == pipeline["balancing"])
                & (grid["classifier"] == pipeline["classifier"])]
    return float(cell["auc"].iloc[0]) if len(cell) and pd.notna(cell["auc"].iloc[0]) else float("-inf")


def group_members(groups: Mapping[str, str], grid: pd.DataFrame) -> dict[str, list[str]]:
    """Pretraining group -> the grid's extractors in it (combinations left out: they mix groups), groups in
    vocabulary order."""
    present = set(grid["extractor"])
    members = {group: sorted(name for name, of in groups.items() if of == group and name in present)
               for group in PRETRAINING_GROUPS}
    return {group: names for group, names in members.items() if names}


def _oriented(comparisons: pd.DataFrame, a: str, b: str) -> pd.Series | None:
    """The comparison of a with b, whichever way the table holds it (flipped: sides, AUCs, sign, interval)."""
    forward = comparisons[(comparisons["a"] == a) & (comparisons["b"] == b)]
    if len(forward):
        return forward.iloc[0].copy()
    backward = comparisons[(comparisons["a"] == b) & (comparisons["b"] == a)]
    if backward.empty:
        return None
    row = backward.iloc[0].copy()
    row["a"], row["b"], row["auc_a"], row["auc_b"] = a, b, row["auc_b"], row["auc_a"]
    row["difference"], row["ci_low"], row["ci_high"] = -row["difference"], -row["ci_high"], -row["ci_low"]
    return row


def group_paragraphs(groups: Mapping[str, str], grid: pd.DataFrame, comparisons: pd.DataFrame) -> list[str] | None:
    """The first question over pretraining groups; None when fewer than two groups have pretrained extractors."""
    members = group_members(groups, grid)
    compared = [group for group in COMPARED_GROUPS if group in members]
    if len(compared) < 2:
        return None
    best = {group: max(members[group], key=lambda name: (_compare_auc(grid, comparisons, name), name))
            for group in compared}
    label = {group: best[group] + (BEST if len(members[group]) > 1 else "") for group in compared}
    rows, missing = [], []
    for first, second in combinations(compared, 2):
        row = _oriented(comparisons, best[first], best[second])
        if row is None:
            missing.append(f"{best[first]} vs {best[second]}")
            continue
        row["a"], row["b"] = label[first], label[second]
        rows.append(row)
    listing = "; ".join(f"{group}: {', '.join(names)}" for group, names in members.items())
    paragraphs = [f"Pretraining groups of this study's extractors: {listing}. Each compared group is represented "
                  "by its best extractor under the compare pipeline"
                  + (f" (marked{BEST}: picked after the fact on these images, so optimistic)" if BEST in
                     "".join(label.values()) else "") + "."]
    if rows:
        paragraphs = question_paragraphs(GROUPS_QUESTION, pd.DataFrame(rows), grid) + paragraphs
    else:
        paragraphs.insert(0, f"{GROUPS_QUESTION} Not answered: the groups' best extractors were not compared.")
    if missing:
        paragraphs.append(f"Not compared ({', '.join(missing)}): add the pairs to grid.comparisons, or leave it "
                          "null to compare every pair.")
    return paragraphs


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
                    transfer: pd.DataFrame | None = None, finetune: pd.DataFrame | None = None,
                    groups: Mapping[str, str] | None = None) -> Section:
    """The verdict: one paragraph per question of the paper, each sentence from the numbers. `transfer`:
    results/finetune_vs_frozen.parquet; `finetune`: results/finetune.parquet (its weights ids); `groups`: each
    extractor's pretraining group."""
    section = Section("Verdict: the paper's three questions")
    if grid is None or comparisons is None or comparisons.empty:
        section.paragraphs.append("No verdict: it needs the grid's paired extractor comparisons "
                                  "(results/comparisons.parquet), and the grid has not produced them.")
        return section
    for question, rows in _questions(comparisons):
        if question.startswith("2."):
            section.paragraphs.extend(_transfer_paragraphs(question, transfer, finetune, grid))
            continue
        by_group = group_paragraphs(groups or {}, grid, comparisons) if question.startswith("1.") else None
        if by_group is not None:
            section.paragraphs.extend(by_group)
            continue
        if rows.empty:
            section.paragraphs.append(f"{question} Not answered: this study has no such pair of extractors.")
            continue
        section.paragraphs.extend(question_paragraphs(question, rows, grid))
    return section


__all__ = ["comparison_conclusion", "comparison_numbers", "group_paragraphs", "question_paragraphs",
           "verdict_section"]
