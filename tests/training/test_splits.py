"""Validation splits: patient-grouped (default) and the paper's image-level 20%."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammo_ray.training.splits import make_split, paper_split, patient_split


def _frame(
    patients: int, images_per_patient: int = 4, positive_every: int = 4, seed: int = 0
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        positive = p % positive_every == 0
        for i in range(images_per_patient):
            rows.append({"patient_id": f"p{p:03d}", "target": int(positive and i < 2),
                         "noise": rng.normal()})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("patients", [2, 5, 6, 23, 103])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_patient_split_never_shares_a_patient(patients, seed):
    frame = _frame(patients)
    split = patient_split(frame, seed=seed)
    train_patients = set(frame["patient_id"].iloc[split.train])
    val_patients = set(frame["patient_id"].iloc[split.val])
    assert train_patients.isdisjoint(val_patients)
    assert sorted(np.concatenate([split.train, split.val]).tolist()) == list(range(len(frame)))
    assert len(split.val) > 0 and len(split.train) > 0


def test_patient_split_is_deterministic_stratified_and_about_a_fifth():
    frame = _frame(100)
    first, again = patient_split(frame, seed=3), patient_split(frame, seed=3)
    assert np.array_equal(first.val, again.val) and first.stratified
    assert not np.array_equal(first.val, patient_split(frame, seed=4).val)
    assert 0.15 <= len(first.val) / len(frame) <= 0.25
    positives = frame["target"].iloc[first.val].mean()
    assert abs(positives - frame["target"].mean()) < 0.06  # stratified by the target


def test_patient_split_falls_back_to_grouped_shuffle_when_a_class_is_rare():
    frame = _frame(10)
    frame.loc[:, "target"] = 0
    frame.loc[0, "target"] = 1  # one patient holds the only positive
    split = patient_split(frame, seed=0)
    assert not split.stratified
    assert set(frame["patient_id"].iloc[split.train]).isdisjoint(frame["patient_id"].iloc[split.val])


def test_paper_split_is_the_papers_82_of_410_images():
    # INbreast: 310 negatives, 100 positives; Table 1's accuracies are multiples of 1/82.
    frame = pd.DataFrame({"patient_id": [f"p{i // 4}" for i in range(410)], "target": [0] * 310 + [1] * 100})
    split = paper_split(frame, seed=0)
    assert len(split.val) == 82 and len(split.train) == 328 and split.stratified
    assert frame["target"].iloc[split.val].sum() == 20  # stratified: 20% of the 100 positives
    assert np.array_equal(split.val, make_split(frame, "paper", seed=0).val)
    # Image-level: patients do end up on both sides (the leak the default protocol avoids).
    assert set(frame["patient_id"].iloc[split.train]) & set(frame["patient_id"].iloc[split.val])


def test_bad_arguments():
    frame = _frame(4)
    with pytest.raises(ValueError, match="protocol"):
        make_split(frame, "kfold")
    with pytest.raises(ValueError, match="val_fraction"):
        patient_split(frame, val_fraction=1.0)
    with pytest.raises(ValueError, match="2 patients"):
        patient_split(frame[frame["patient_id"] == "p000"])
