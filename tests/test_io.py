"""Tests of NIfTI / FSL input and output: lazy reading, masks, map writing, atomic output folders."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import torch

from varmap import io
from varmap.io import InputError
from varmap.protocol import ProtocolError

AFFINE = np.array([[-2.0, 0.0, 0.1, 90.0], [0.0, 2.0, 0.0, -120.0], [0.0, 0.0, 2.5, -70.0], [0, 0, 0, 1]])


def write_image(path, data, *, affine=AFFINE, dtype=None, sform_code=2, qform_code=1):
    """Save ``data``; with an integer ``dtype`` nibabel stores float data with a scale factor."""
    image = nib.Nifti1Image(np.asarray(data), affine)
    image.set_sform(affine, sform_code)
    image.set_qform(affine, qform_code)
    if dtype is not None:
        image.set_data_dtype(dtype)
    nib.save(image, path)
    return path


def write_fsl(tmp_path, bvals, bvecs, name="dwi"):
    bval_path, bvec_path = tmp_path / f"{name}.bval", tmp_path / f"{name}.bvec"
    np.savetxt(bval_path, np.asarray(bvals)[None], fmt="%g")
    np.savetxt(bvec_path, np.asarray(bvecs).T, fmt="%.8f")
    return bval_path, bvec_path


@pytest.fixture
def table(clinical_protocol):
    """b-values (s/mm², as FSL files hold them) and directions of the shared two-shell protocol."""
    return clinical_protocol.bvals * 1000.0, clinical_protocol.bvecs


@pytest.fixture
def dwi_data():
    rng = np.random.default_rng(0)
    return rng.uniform(10, 1000, size=(5, 6, 4, 14)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- DWI
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_open_and_load_dwi_float32(tmp_path, dwi_data, suffix):
    path = write_image(tmp_path / f"dwi{suffix}", dwi_data)
    dwi = io.open_dwi(path)
    assert dwi.shape == dwi_data.shape and dwi.n_volumes == 14 and dwi.spatial_shape == (5, 6, 4)
    np.testing.assert_allclose(dwi.affine, AFFINE)
    data, affine, header = io.load_dwi(path)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, dwi_data)
    np.testing.assert_allclose(affine, AFFINE)
    assert header.get_sform(coded=True)[1] == 2


def test_scaled_integer_image_reads_as_float32(tmp_path, dwi_data):
    path = write_image(tmp_path / "dwi.nii.gz", dwi_data, dtype=np.int16)
    dwi = io.open_dwi(path)
    slope = dwi.image.dataobj.slope
    assert slope != 1.0
    block = dwi.volumes(0, 3)
    assert block.dtype == np.float32
    mask = np.ones(dwi.spatial_shape, bool)
    signals = dwi.extract(mask)
    assert signals.dtype == np.float32 and signals.flags.c_contiguous
    np.testing.assert_allclose(signals, dwi_data.reshape(-1, 14), atol=slope)


def test_extract_matches_mask_order_across_slabs(tmp_path, dwi_data, monkeypatch):
    path = write_image(tmp_path / "dwi.nii.gz", dwi_data)
    monkeypatch.setattr(io, "_SLAB_BYTES", 8 * 5 * 6 * 4 * 3)  # three volumes per slab
    mask = np.zeros((5, 6, 4), bool)
    mask[1:4, 2:5, 1:3] = True
    mask[0, 0, 0] = True
    signals = io.open_dwi(path).extract(mask)
    np.testing.assert_array_equal(signals, dwi_data[mask])
    np.testing.assert_array_equal(io.extract_voxels(dwi_data, mask), dwi_data[mask])
    back = io.to_image_space(signals[:, 0], mask)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back[mask], dwi_data[mask][:, 0])
    assert np.all(back[~mask] == 0)


def test_extract_holds_only_masked_voxels(tmp_path):
    shape = (40, 40, 20, 16)
    data = np.ones(shape, dtype=np.int16)
    path = write_image(tmp_path / "big.nii", data, dtype=np.int16)
    mask = np.zeros(shape[:3], bool)
    mask[10:30, 10:30, 5:15] = True
    dwi = io.open_dwi(path)
    tracemalloc.start()
    signals = dwi.extract(mask)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    whole_float64 = np.prod(shape) * 8
    assert signals.shape == (4000, 16)
    assert peak < 0.75 * whole_float64  # never one float64 copy of the whole image


def test_to_image_space_nan_becomes_fill():
    mask = np.zeros((2, 2, 2), bool)
    mask[0, 0, :] = True
    out = io.to_image_space(np.array([np.nan, 2.0]), mask)
    assert out[0, 0, 0] == 0 and out[0, 0, 1] == 2 and out.sum() == 2
    vectors = io.to_image_space(np.ones((2, 3)), mask)
    assert vectors.shape == (2, 2, 2, 3)


def test_open_dwi_errors(tmp_path, dwi_data):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.open_dwi(tmp_path / "missing.nii.gz")
    three_d = write_image(tmp_path / "t1.nii.gz", dwi_data[..., 0])
    with pytest.raises(InputError, match="3 dimensions.*4-D"):
        io.open_dwi(three_d)
    text = tmp_path / "dwi.nii.gz"
    text.write_text("not an image")
    with pytest.raises(InputError, match="cannot be read as NIfTI"):
        io.open_dwi(text)
    other = tmp_path / "dwi.mgz"
    other.write_bytes(b"x")
    with pytest.raises(InputError, match="not a NIfTI file"):
        io.open_dwi(other)


def damaged(path, how):
    """Write a damaged copy of the image file ``path``: cut in half, or with bytes overwritten mid-file."""
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    if how == "truncated":
        raw = raw[:middle]
    else:
        raw[middle : middle + 64] = b"x" * 64
    copy = path.with_name(f"{how}_{path.name}")
    copy.write_bytes(bytes(raw))
    return copy


@pytest.mark.parametrize(("suffix", "how"), [(".nii.gz", "truncated"), (".nii.gz", "corrupt"), (".nii", "truncated")])
def test_damaged_image_is_refused_before_fitting(tmp_path, dwi_data, suffix, how):
    """A truncated file is refused when opened (a .nii.gz by its gzip trailer, without decompressing it);
    damage inside a gzip stream at the latest when the voxels are read, the first heavy step."""
    bad = damaged(write_image(tmp_path / f"dwi{suffix}", dwi_data), how)
    with pytest.raises(InputError, match=f"DWI image {bad} cannot be read: its voxel data are truncated or corrupt"):
        io.open_dwi(bad).extract(np.ones(dwi_data.shape[:3], dtype=bool))
    if how == "truncated":
        with pytest.raises(InputError, match="truncated or corrupt"):
            io.open_dwi(bad)
    bad_mask = damaged(write_image(tmp_path / f"mask{suffix}", dwi_data[..., 0]), how)
    with pytest.raises(InputError, match=f"mask {bad_mask} cannot be read"):
        io.load_mask(bad_mask, dwi_data.shape[:3])


def test_intact_gzip_image_is_not_decompressed_when_opened(tmp_path, dwi_data, monkeypatch):
    path = write_image(tmp_path / "dwi.nii.gz", dwi_data)
    monkeypatch.setattr(io.DWIImage, "volumes", lambda *args: pytest.fail("voxels read when opening"))
    assert io.open_dwi(path).shape == dwi_data.shape


def test_read_errors_after_opening_name_the_file(tmp_path, dwi_data, monkeypatch):
    dwi = io.open_dwi(write_image(tmp_path / "dwi.nii.gz", dwi_data))

    class Broken:
        def __getitem__(self, key):
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr(dwi, "image", type("Image", (), {"dataobj": Broken()})())
    with pytest.raises(InputError, match="dwi.nii.gz cannot be read.*end-of-stream"):
        dwi.extract(np.ones(dwi.spatial_shape, bool))


def test_load_noise_map(tmp_path):
    mask = np.zeros((5, 6, 4), bool)
    mask[1:4, 1:4, 1:3] = True
    sigma = np.where(mask, 20.0, 0.0)
    path = write_image(tmp_path / "noise.nii.gz", sigma.astype(np.float32))
    np.testing.assert_array_equal(io.load_noise_map(path, (5, 6, 4), mask), sigma)
    np.testing.assert_array_equal(io.load_noise_map(write_image(tmp_path / "n4.nii.gz", sigma[..., None]),
                                                    (5, 6, 4), mask), sigma)
    with pytest.raises(FileNotFoundError, match="noise map .*nope.nii.gz does not exist"):
        io.load_noise_map(tmp_path / "nope.nii.gz", (5, 6, 4), mask)
    with pytest.raises(InputError, match=r"noise map .* has shape \(5, 6, 4\) but the DWI volumes have \(5, 6, 5\)"):
        io.load_noise_map(path, (5, 6, 5), np.ones((5, 6, 5), bool))
    holes = sigma.copy()
    holes[1, 1, 1], holes[2, 2, 1], holes[3, 3, 2] = np.nan, 0.0, -1.0
    with pytest.raises(InputError, match=r"noise map .* \(1 NaN/Inf, 2 <= 0 of 18\).*leave out --noise-map"):
        io.load_noise_map(write_image(tmp_path / "holes.nii.gz", holes.astype(np.float32)), (5, 6, 4), mask)


@pytest.mark.parametrize(("scale", "unit", "fix"), [(1e6, "s/m²", "divide them by 10⁶"),
                                                    (1e-3, "ms/µm²", "multiply them by 1000")])
def test_load_protocol_refuses_bvalues_in_another_unit(tmp_path, table, scale, unit, fix):
    bval, bvec = write_fsl(tmp_path, table[0] * scale, table[1])
    with pytest.raises(ProtocolError, match=f"should be in s/mm².*look like {unit}.*{fix}") as info:
        io.load_protocol(bval, bvec)
    assert str(bval) in str(info.value)
    # the unit said explicitly is taken
    assert io.load_protocol(bval, bvec, units="s/m2" if scale > 1 else "ms/um2") == io.load_protocol(
        *write_fsl(tmp_path, table[0], table[1], name="ok"))


# ---------------------------------------------------------------------------------------------- protocol
def test_load_protocol(tmp_path, table, clinical_protocol):
    bval, bvec = write_fsl(tmp_path, *table)
    protocol = io.load_protocol(bval, bvec, n_volumes=len(table[0]))
    assert protocol == clinical_protocol and protocol.n_b0 == 2


def test_load_protocol_errors_name_the_files(tmp_path, table):
    bvals, bvecs = table
    n = len(bvals)
    bval, bvec = write_fsl(tmp_path, bvals, bvecs)
    with pytest.raises(InputError, match=rf"dwi\.bval lists {n} b-values but the image has {n + 1} volumes"):
        io.load_protocol(bval, bvec, n_volumes=n + 1)
    bval2, bvec2 = write_fsl(tmp_path, bvals, bvecs[:, :2], name="two")
    with pytest.raises(InputError, match=rf"two\.bvec holds a 2x{n} table; it needs 3 rows of {n}"):
        io.load_protocol(bval2, bvec2, n_volumes=n)
    bval3, bvec3 = write_fsl(tmp_path, bvals[:-1], bvecs[:-1], name="short")
    with pytest.raises(InputError, match=f"{n - 1} b-values but the image has {n}"):
        io.load_protocol(bval3, bvec3, n_volumes=n)
    bval4, bvec4 = write_fsl(tmp_path, bvals * 0.035, bvecs, name="units")
    with pytest.raises(ProtocolError, match="unit of the b-values"):
        io.load_protocol(bval4, bvec4, n_volumes=n)
    bad = tmp_path / "bad.bval"
    bad.write_text("0 1000 abc\n")
    with pytest.raises(InputError, match="not a table of numbers"):
        io.load_protocol(bad, bvec, n_volumes=3)
    with pytest.raises(FileNotFoundError, match="bvecs file"):
        io.load_protocol(bval, tmp_path / "nope.bvec")


# ---------------------------------------------------------------------------------------------- masks
def test_load_mask(tmp_path):
    data = np.zeros((5, 6, 4), np.uint8)
    data[1:3, 1:3, 1:3] = 1
    mask = io.load_mask(write_image(tmp_path / "m.nii.gz", data), (5, 6, 4))
    assert mask.dtype == bool and mask.sum() == 8
    four_d = io.load_mask(write_image(tmp_path / "m4.nii.gz", data[..., None]), (5, 6, 4))
    np.testing.assert_array_equal(four_d, mask)
    with pytest.raises(InputError, match=r"shape \(5, 6, 4\) but the DWI volumes have \(5, 6, 5\)"):
        io.load_mask(tmp_path / "m.nii.gz", (5, 6, 5))
    with pytest.raises(InputError, match="selects no voxel"):
        io.load_mask(write_image(tmp_path / "empty.nii.gz", np.zeros((5, 6, 4), np.uint8)), (5, 6, 4))


def test_load_mask_warns_on_other_affine(tmp_path, caplog):
    path = write_image(tmp_path / "m.nii.gz", np.ones((5, 6, 4), np.uint8), affine=np.eye(4))
    with caplog.at_level("WARNING", logger="varmap"):
        io.load_mask(path, (5, 6, 4), affine=AFFINE)
    assert "another affine than the DWI" in caplog.text


def test_compute_mask_finds_object_and_fills_holes():
    rng = np.random.default_rng(1)
    x, y, z = np.mgrid[:40, :40, :30]
    ball = (x - 20) ** 2 + (y - 20) ** 2 + ((z - 15) * 1.3) ** 2 < 14**2
    volume = np.abs(rng.normal(0, 10, ball.shape)) + 500.0 * ball
    volume[20, 20, 15] = 0.0  # a dark hole inside
    mask = io.compute_mask(volume)
    assert mask[20, 20, 15]
    dice = 2 * (mask & ball).sum() / (mask.sum() + ball.sum())
    assert dice > 0.9


def test_compute_mask_without_background_keeps_every_voxel(caplog):
    rng = np.random.default_rng(2)
    volume = rng.uniform(200, 300, (6, 10, 10))
    volume[4:, 6:, 6:] = 450.0  # bright CSF in a crop of brain tissue
    with caplog.at_level("WARNING", logger="varmap"):
        mask = io.compute_mask(volume)
    assert mask.all()
    assert "no background" in caplog.text


def test_compute_mask_sees_tissue_left_out_by_its_diffusion_attenuation(caplog):
    """A crop of brain tissue (b=0 200, kept 45 % at b=1000) around CSF (b=0 1100, kept 5 %): Otsu keeps
    only the CSF, and the tissue it leaves out is too dark for the brightness test (18 %), but diffusion
    weighting attenuates it, as it does not attenuate background noise (dipy's small_64D is such a crop)."""
    rng = np.random.default_rng(3)
    csf = np.zeros((10, 10, 10), dtype=bool)
    csf[:3] = True
    b0 = np.where(csf, 1100.0, 200.0) + rng.normal(0, 10, csf.shape)
    dw = np.where(csf, 55.0, 90.0) + rng.normal(0, 10, csf.shape)
    assert not io.compute_mask(b0).all()
    with caplog.at_level("WARNING", logger="varmap"):
        mask = io.compute_mask(b0, mean_dw=dw)
    assert mask.all()
    assert "attenuates the signal outside the Otsu mask to" in caplog.text


def test_compute_mask_keeps_background_that_diffusion_weighting_does_not_attenuate():
    rng = np.random.default_rng(4)
    x, y, z = np.mgrid[:40, :40, :30]
    ball = (x - 20) ** 2 + (y - 20) ** 2 + ((z - 15) * 1.3) ** 2 < 14**2
    noise = np.abs(rng.normal(0, 10, (2, *ball.shape)))
    mask = io.compute_mask(noise[0] + 500.0 * ball, mean_dw=noise[1] + 200.0 * ball)
    assert 2 * (mask & ball).sum() / (mask.sum() + ball.sum()) > 0.9


# ---------------------------------------------------------------------------------------------- writing
def test_save_map_keeps_spatial_header(tmp_path, dwi_data):
    source = write_image(tmp_path / "dwi.nii.gz", dwi_data, dtype=np.int16, sform_code=4, qform_code=1)
    header = nib.load(source).header
    array = np.arange(5 * 6 * 4, dtype=np.float64).reshape(5, 6, 4)
    out = io.save_map(array, tmp_path / "D.nii.gz", AFFINE, header)
    image = nib.load(out)
    assert image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.affine, AFFINE, atol=1e-6)
    assert image.header.get_sform(coded=True)[1] == 4 and image.header.get_qform(coded=True)[1] == 1
    np.testing.assert_allclose(image.header.get_zooms(), header.get_zooms()[:3], rtol=1e-6)
    assert image.dataobj.slope == 1.0 and image.dataobj.inter == 0.0
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), array.astype(np.float32))
    vectors = io.save_map(np.zeros((5, 6, 4, 3)), tmp_path / "n.nii.gz", AFFINE, header)
    assert nib.load(vectors).shape == (5, 6, 4, 3)


def test_save_json_writes_plain_utf8_json(tmp_path):
    path = io.save_json({"D": np.float32(1.5), "units": "µm²/ms", "bad": np.nan}, tmp_path / "fit.json")
    text = path.read_text(encoding="utf-8")
    assert "µm²/ms" in text and text.endswith("\n")
    assert json.loads(text) == {"D": 1.5, "units": "µm²/ms", "bad": None}


def test_checkpoint_round_trip_and_errors(tmp_path):
    checkpoint = {"model": "msdki", "protocol": {"bvals_s_per_mm2": [0.0]}, "state": {"w": torch.ones(2)}}
    path = io.save_checkpoint(checkpoint, tmp_path / "model.pt")
    loaded = io.load_checkpoint(path, device="cpu")
    assert loaded["model"] == "msdki" and torch.equal(loaded["state"]["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="checkpoint .*nope.pt does not exist"):
        io.load_checkpoint(tmp_path / "nope.pt")
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(InputError, match="text.pt cannot be read .*model.pt written by varmap fit"):
        io.load_checkpoint(text)
    other = io.save_checkpoint({"weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt is not a varmap checkpoint"):
        io.load_checkpoint(other)


def test_sha256sum(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"varmap" * 1000)
    assert io.sha256sum(path, block_size=7) == hashlib.sha256(b"varmap" * 1000).hexdigest()


# ---------------------------------------------------------------------------------------------- atomic output
def hidden_leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_atomic_output_dir_moves_into_place(tmp_path):
    target = tmp_path / "sub" / "out"
    with io.atomic_output_dir(target) as temporary:
        assert temporary.parent == target.parent.absolute() and not target.exists()
        (temporary / "a.txt").write_text("a")
    assert (target / "a.txt").read_text() == "a"
    assert hidden_leftovers(target.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o777 & ~umask  # the usual permissions, not mkdtemp's 0700


def test_atomic_output_dir_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_output_dir(target) as temporary:
            (temporary / "half.nii.gz").write_text("partial")
            raise KeyboardInterrupt
    assert not target.exists()
    assert hidden_leftovers(tmp_path) == []


def test_atomic_output_dir_refuses_existing_and_force_replaces(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        with io.atomic_output_dir(target):
            pass
    assert (target / "old.txt").read_text() == "old"
    with pytest.raises(RuntimeError):
        with io.atomic_output_dir(target, force=True) as temporary:
            (temporary / "new.txt").write_text("new")
            raise RuntimeError("failed run")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    with io.atomic_output_dir(target, force=True) as temporary:
        (temporary / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert hidden_leftovers(tmp_path) == []
