"""write_phantom: the files of a written phantom, their content, and the atomic, refusing writer."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from varmap import Protocol
from varmap.phantom import Phantom, make_phantom, write_phantom
from varmap.phantom.export import phantom_images, readme_text


def test_write_phantom_files(tmp_path, ball_stick_phantom: Phantom) -> None:
    out = tmp_path / "phantom"
    files = write_phantom(ball_stick_phantom, out)
    assert all(f.exists() for f in files)
    dwi = nib.load(out / "dwi.nii.gz")
    assert dwi.shape == ball_stick_phantom.dwi.shape and dwi.get_data_dtype() == np.float32
    np.testing.assert_allclose(dwi.affine, ball_stick_phantom.affine)
    np.testing.assert_array_equal(np.asarray(dwi.dataobj), ball_stick_phantom.dwi)
    protocol = Protocol.from_fsl(out / "dwi.bval", out / "dwi.bvec")
    assert protocol == ball_stick_phantom.protocol
    assert np.loadtxt(out / "dwi.bval").shape == (dwi.shape[3],)
    assert np.loadtxt(out / "dwi.bvec").shape == (3, dwi.shape[3])
    mask = nib.load(out / "mask.nii.gz")
    np.testing.assert_array_equal(np.asarray(mask.dataobj) > 0, ball_stick_phantom.mask)
    for name in ("f", "d_par", "d_iso", "mixture_f", "mixture_d_par", "mixture_d_iso", "S0", "fraction_wm", "fraction_gm", "fraction_csf", "labels"):
        image = nib.load(out / "truth" / f"{name}.nii.gz")
        assert image.shape == ball_stick_phantom.shape, name
    assert nib.load(out / "truth" / "n.nii.gz").shape == ball_stick_phantom.shape + (3,)
    readme = (out / "truth" / "README.txt").read_text()
    assert "fitted by least squares" in readme and "mixture_<name>.nii.gz" in readme and "Model: ball_stick." in readme
    config = json.loads((out / "phantom.json").read_text())
    assert config["seed"] == 1 and config["model"] == "ball_stick"
    with pytest.raises(FileExistsError, match="--force"):
        write_phantom(ball_stick_phantom, out)
    write_phantom(ball_stick_phantom, out, force=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_phantom_images_are_stored_types(ball_stick_phantom: Phantom) -> None:
    images = phantom_images(ball_stick_phantom)
    assert list(images)[:2] == ["mask.nii.gz", "truth/f.nii.gz"]
    assert images["mask.nii.gz"].dtype == np.uint8 and images["truth/labels.nii.gz"].dtype == np.uint8
    assert images["truth/n.nii.gz"].dtype == np.float32
    # labels are shifted so that 0 is the background
    np.testing.assert_array_equal(images["truth/labels.nii.gz"], ball_stick_phantom.labels + 1)


def test_readme_names_the_model_parameters(msdki_phantom: Phantom) -> None:
    text = readme_text(msdki_phantom)
    assert "D.nii.gz" in text and "K.nii.gz" in text and "n.nii.gz" not in text
    assert "turning point" in text  # MS-DKI's extra limit on K


def test_write_phantom_refuses_a_phantom_without_image(tmp_path) -> None:
    phantom = make_phantom(voxel_size=2.0, crop=(4, 4, 2), image=False)
    with pytest.raises(ValueError, match="image=True"):
        write_phantom(phantom, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_noise_field_phantom_writes_its_noise_map(tmp_path, ball_stick_phantom: Phantom) -> None:
    """``varmap phantom --noise-field``: the truth gains sigma.nii.gz (every voxel's noise level) and the
    README says the noise level varies; a phantom without the field writes no noise map."""
    from varmap.cli import main

    assert "truth/sigma.nii.gz" not in phantom_images(ball_stick_phantom)
    out = tmp_path / "phantom"
    arguments = ["--voxel-size", "2", "--crop", "8", "8", "4", "--noise-field", "--quiet"]
    assert main(["phantom", "-o", str(out), *arguments]) == 0
    phantom = make_phantom(voxel_size=2.0, crop=(8, 8, 4), noise_field=True)
    sigma = nib.load(out / "truth" / "sigma.nii.gz")
    np.testing.assert_array_equal(np.asarray(sigma.dataobj), phantom.sigma_map)
    readme = (out / "truth" / "README.txt").read_text()
    assert "noise level varies smoothly" in readme and "sigma.nii.gz" in readme
    assert "noise_field" in json.loads((out / "phantom.json").read_text())
