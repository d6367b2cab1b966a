"""``varmap phantom --bids``: a BIDS cohort of phantom subjects with their ground truth."""

from __future__ import annotations

import json

import pytest

from varmap.cli import main
from varmap.phantom.cohort import MAX_SHIFT_VOXELS, SNR_SPREAD, subject_settings, write_phantom_cohort

SMALL = ["--voxel-size", "4", "--crop", "6", "6", "4", "--quiet"]


def test_phantom_bids_cohort_is_indexed_by_pybids_with_its_truth(tmp_path):
    import bids

    root = tmp_path / "cohort"
    assert main(["phantom", "--bids", str(root), "--subjects", "2", "--seed", "4", *SMALL]) == 0
    layout = bids.BIDSLayout(root, validate=False, derivatives=True)
    assert layout.get_subjects() == ["01", "02"]
    assert len(layout.get(scope="raw", suffix="dwi", extension=".nii.gz")) == 2
    assert len(layout.get(scope="raw", suffix="dwi", extension=".bval")) == 2
    truth = layout.get(scope="derivatives", subject="02", suffix="dwimap", extension=".nii.gz")
    assert sorted(f.filename for f in truth) == sorted(
        [f"sub-02_model-msdki_param-{p}_dwimap.nii.gz" for p in ("md", "mk", "s0")]
        + [f"sub-02_model-msdki_param-{p}_desc-mixture_dwimap.nii.gz" for p in ("md", "mk")])
    assert len(layout.get(scope="derivatives", subject="01", suffix="probseg", extension=".nii.gz")) == 3
    record = json.loads((root / "derivatives/truth/sub-01/dwi/sub-01_phantom.json").read_text())
    assert record["subject_settings"] == {**subject_settings("01", seed=4, snr=10.0, crop=(6, 6, 4), voxel_size=4.0),
                                          "crop": record["subject_settings"]["crop"]}
    assert main(["phantom", "--bids", str(root), "--subjects", "2", *SMALL]) == 2


def test_subjects_differ_in_seed_field_of_view_and_noise():
    settings = [subject_settings(f"{i:02d}", seed=0, snr=10.0, crop=(6, 6, 4), voxel_size=4.0) for i in range(1, 9)]
    assert len({s["seed"] for s in settings}) == 8
    assert len({s["snr"] for s in settings}) == 8
    assert all(10.0 / SNR_SPREAD <= s["snr"] <= 10.0 * SNR_SPREAD for s in settings)
    assert all(max(abs(v) for v in s["shift"]) <= MAX_SHIFT_VOXELS for s in settings)
    assert len({tuple(s["shift"]) for s in settings}) > 1
    assert all(part.stop - part.start == size for s in settings for part, size in zip(s["crop"], (6, 6, 4)))


def test_empty_cohort_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 1 subject"):
        write_phantom_cohort(tmp_path / "c", n_subjects=0)
