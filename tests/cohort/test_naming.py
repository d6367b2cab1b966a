"""BIDS-Derivatives names of varmap's outputs."""

from __future__ import annotations

import pytest

from varmap.cohort.naming import PARAM_LABELS, BidsPrefix, output_name, source_entities
from varmap.signal_models import SIGNAL_MODELS


def test_every_model_parameter_has_an_alphanumeric_label():
    for model, labels in PARAM_LABELS.items():
        names = {p.name for p in SIGNAL_MODELS[model].parameters} | {"S0"}
        names |= {"n"} if SIGNAL_MODELS[model].has_direction else set()
        assert set(labels) == names
        assert all(label.isalnum() and label.islower() for label in labels.values())
        assert len(set(labels.values())) == len(labels)


def test_names_keep_the_source_entities_in_bids_order():
    dwi = "sub-01_ses-2_acq-hardi_run-1_space-T1w_desc-preproc_dwi.nii.gz"
    prefix = BidsPrefix("01", "2", source_entities(dwi))
    assert str(prefix.folder) == "sub-01/ses-2"
    assert output_name("K_std", "msdki", prefix) == (
        "sub-01_ses-2_acq-hardi_run-1_space-T1w_model-msdki_param-mk_desc-std_dwimap.nii.gz")
    assert output_name("mask", "msdki", prefix) == "sub-01_ses-2_acq-hardi_run-1_space-T1w_desc-brain_mask.nii.gz"


@pytest.mark.parametrize("output, name", [
    ("f", "sub-01_model-ballstick_param-fstick_dwimap.nii.gz"),
    ("n", "sub-01_model-ballstick_param-stickdir_dwimap.nii.gz"),
    ("cluster_probs", "sub-01_model-ballstick_desc-clusters_probseg.nii.gz"),
    ("clusters", "sub-01_model-ballstick_desc-clusters_dseg.nii.gz"),
    ("sigma", "sub-01_model-ballstick_stat-sigma_dwimap.nii.gz"),
])
def test_ball_stick_names(output, name):
    assert output_name(output, "ball_stick", BidsPrefix("01")) == name


def test_unknown_output_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="no BIDS name for the msdki output 'f'.*K_std"):
        output_name("f", "msdki", BidsPrefix("01"))
