"""Scans found through pybids, and every problem of every scan listed before any fitting."""

from __future__ import annotations

import shutil

import pytest

from varmap.cohort.checks import scan_problems
from varmap.cohort.discovery import find_scans, parse_filters
from varmap.io import InputError, load_protocol


def test_finds_each_subjects_dwi_tables_and_mask(cohort):
    scans, problems = find_scans(cohort, participant_labels=["sub-01", "03"])
    assert problems == {}
    assert [prefix.name for prefix, _ in scans] == ["sub-01", "sub-03"]
    prefix, scan = scans[0]
    assert (scan.dwi.name, scan.bvals.name, scan.bvecs.name) == ("sub-01_dwi.nii.gz", "sub-01_dwi.bval", "sub-01_dwi.bvec")
    assert scan.mask.name == "sub-01_desc-brain_mask.nii.gz"
    assert scan_problems(scan, model="msdki") == []


def test_sessions_are_scans_of_their_own(copy_cohort):
    bids_dir = copy_cohort()
    subject = bids_dir / "sub-01"
    for session in ("1", "2"):
        target = subject / f"ses-{session}" / "dwi"
        target.mkdir(parents=True)
        for path in (subject / "dwi").iterdir():
            shutil.copy(path, target / path.name.replace("sub-01_", f"sub-01_ses-{session}_"))
    shutil.rmtree(subject / "dwi")
    scans, _ = find_scans(bids_dir, participant_labels=["01"], session_labels=["ses-2"])
    assert [(prefix.name, str(prefix.folder), prefix.stem) for prefix, _ in scans] == [
        ("sub-01 ses-2", "sub-01/ses-2", "sub-01_ses-2")]


def test_every_problem_of_every_subject_is_listed(copy_cohort):
    bids_dir = copy_cohort()
    (bids_dir / "sub-01" / "dwi" / "sub-01_dwi.bvec").unlink()
    dwi2 = bids_dir / "sub-02" / "dwi"
    shutil.copy(dwi2 / "sub-02_dwi.nii.gz", dwi2 / "sub-02_acq-b_dwi.nii.gz")
    scans, problems = find_scans(bids_dir)
    assert [prefix.name for prefix, _ in scans] == ["sub-03"]
    assert "no .bvec file" in problems["sub-01"][0]
    assert "2 DWI series" in problems["sub-02"][0] and "--bids-filter" in problems["sub-02"][0]
    scans, problems = find_scans(bids_dir, filters=parse_filters(["acq=b"]))
    assert [prefix.stem for prefix, _ in scans] == ["sub-02_acq-b"]


def test_scan_problems_lists_volumes_mask_and_protocol_at_once(copy_cohort, tmp_path):
    import nibabel as nib
    import numpy as np

    bids_dir = copy_cohort()
    (_, scan), (_, other) = find_scans(bids_dir, participant_labels=["01", "02"])[0]
    scan.bvals.write_text(" ".join(scan.bvals.read_text().split()[:-1]) + "\n")
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.eye(4)), scan.mask)
    problems = scan_problems(scan, model="msdki")
    assert len(problems) == 2
    assert "b-values but the image has" in problems[0] and "has shape (3, 3, 3)" in problems[1]

    scaled = tmp_path / "scaled.bval"
    scaled.write_text(" ".join(str(2 * float(b)) for b in other.bvals.read_text().split()) + "\n")
    reference = load_protocol(scaled, other.bvecs)
    assert scan_problems(other, model="msdki", protocol=load_protocol(other.bvals, other.bvecs)) == []
    assert "not the population model's" in " ".join(scan_problems(other, model="msdki", protocol=reference))


def test_bad_filter_and_missing_folder_are_refused(tmp_path):
    with pytest.raises(InputError, match="ENTITY=VALUE"):
        parse_filters(["space"])
    with pytest.raises(InputError, match="does not exist"):
        find_scans(tmp_path / "nowhere")
