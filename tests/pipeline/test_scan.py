"""The scan: files checked, mask given or computed, voxels read and the unusable ones counted."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from ellipsoid_scans import AFFINE

from varmap.io import InputError
from varmap.pipeline.scan import brain_mask, open_scan, read_signals


def test_given_mask_is_used_and_named(ellipsoid_scan, tmp_path):
    (dwi, bval, bvec), inside, _ = ellipsoid_scan
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(inside.astype(np.uint8), AFFINE), mask_path)
    scan = open_scan(dwi, bval, bvec, mask=mask_path)
    assert not scan.mask_computed and scan.files["mask"] == mask_path
    np.testing.assert_array_equal(brain_mask(scan), inside)
    computed = open_scan(dwi, bval, bvec)
    assert computed.mask_computed and "mask" not in computed.files
    assert brain_mask(computed).sum() > 0.8 * inside.sum()


def test_unusable_voxels_are_counted_and_logged(ellipsoid_scan, tmp_path, caplog):
    (dwi, bval, bvec), inside, _ = ellipsoid_scan
    image = nib.load(dwi)
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    first, second, third = np.argwhere(inside)[:3]
    data[tuple(first)][5] = np.nan
    data[tuple(second)][:4] = 0.0  # every b=0 signal zero
    data[tuple(third)][:4] = -1.0
    holes = tmp_path / "holes.nii.gz"
    nib.save(nib.Nifti1Image(data, image.affine, image.header), holes)
    scan = open_scan(holes, bval, bvec)
    with caplog.at_level("WARNING", logger="varmap"):
        signals, voxels = read_signals(scan, inside, progress=False)
    assert signals.shape == (inside.sum(), 36) and signals.dtype == np.float32
    assert (voxels.n_nonfinite, voxels.n_nonpositive_b0, voxels.n_excluded) == (1, 2, 3)
    assert f"3 of {inside.sum()} mask voxels are excluded" in caplog.text


def test_no_usable_voxel_is_an_input_error(ellipsoid_scan, tmp_path):
    (dwi, bval, bvec), inside, _ = ellipsoid_scan
    image = nib.load(dwi)
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    data[..., :4] = 0.0  # no positive b=0 signal anywhere
    dark = tmp_path / "dark.nii.gz"
    nib.save(nib.Nifti1Image(data, image.affine, image.header), dark)
    with pytest.raises(InputError, match="no voxel of the mask has finite signals"):
        read_signals(open_scan(dark, bval, bvec), inside, progress=False)
