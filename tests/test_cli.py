"""The ``varmap`` command, called through its entry point: real data end to end, and every bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import varmap
from varmap import cli
from varmap.simulation import add_noise, hcp_protocol

N_EPOCHS = "3"
MODELS = ("msdki", "ball_stick")
METHODS = ("nlls", "selfsup", "vae", "gmvae")
RANGES = {"D": (0.0, 4.0), "K": (-1.0, 3.0), "f": (0.0, 1.0), "d_par": (0.0, 4.0), "d_iso": (0.0, 4.0)}
REQUIRED_KEYS = {"varmap_version", "command", "config", "seed", "inputs", "units", "timings", "history",
                 "voxels", "outputs", "image", "protocol"}


def run(argv, capsys):
    """Call the entry point; returns (exit status, stdout, stderr)."""
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ---------------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def small_101d():
    from dipy.data import get_fnames

    return tuple(Path(p) for p in get_fnames(name="small_101D"))


def method_flags(method):
    flags = [] if method == "nlls" else ["--n-epochs", N_EPOCHS]
    flags += ["--n-posterior-samples", "16"] if method in ("vae", "gmvae") else []
    return flags + (["--refinement-rounds", "1", "--restarts", "0"] if method == "gmvae" else [])


@pytest.fixture(scope="module")
def fitted(small_101d, tmp_path_factory):
    """Every model x method fitted once on small_101D through the CLI, then applied with its checkpoint.

    MS-DKI runs compute their mask (all 600 voxels of this crop); ball-and-stick runs take a mask of
    two sagittal slices (200 voxels) to keep the voxelwise fit quick.
    """
    dwi, bval, bvec = small_101d
    root = tmp_path_factory.mktemp("small_101d")
    source = nib.load(dwi)
    slab = np.zeros(source.shape[:3], np.uint8)
    slab[2:4] = 1
    mask_path = root / "slab_mask.nii.gz"
    nib.save(nib.Nifti1Image(slab, source.affine, source.header), mask_path)
    runs = {}
    for model in MODELS:
        mask = [] if model == "msdki" else ["--mask", str(mask_path)]
        for method in METHODS:
            out = root / f"{model}_{method}"
            status = cli.main(["fit", str(dwi), "--bvals", str(bval), "--bvecs", str(bvec), "--model", model,
                               "--method", method, "-o", str(out), "--quiet", *mask, *method_flags(method)])
            applied = root / f"{model}_{method}_apply"
            apply_status = cli.main(["apply", str(out / "model.pt"), str(dwi), "--bvals", str(bval), "--bvecs",
                                     str(bvec), "-o", str(applied), "--quiet", "--no-figure", *mask])
            runs[model, method] = (status, out, apply_status, applied)
    return runs


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_fit_small_101d(fitted, small_101d, model, method):
    status, out, _, _ = fitted[model, method]
    assert status == 0
    source = nib.load(small_101d[0])
    meta = json.loads((out / "fit.json").read_text())
    assert REQUIRED_KEYS <= set(meta)
    mask = nib.load(out / "mask.nii.gz").get_fdata() > 0
    assert mask.any()

    expected = set(RANGES) & set(varmap.get_signal_model(model, varmap.Protocol.from_fsl(*small_101d[1:])).parameter_names)
    expected |= {"S0", "rmse", "sigma", "mask"} | ({"n"} if model == "ball_stick" else set())
    if method in ("vae", "gmvae"):
        expected |= {f"{name}_std" for name in expected & set(RANGES)} | ({"n_std"} if model == "ball_stick" else set())
        expected |= {"ess"}
    if method == "gmvae":
        expected |= {"cluster_probs", "clusters"}
    written = {p.name[: -len(".nii.gz")] for p in out.glob("*.nii.gz")}
    assert written == expected
    assert {"model.pt", "overview.png", "fit.json"} <= {p.name for p in out.iterdir()}
    assert set(meta["units"]) == written

    for name in written:
        image = nib.load(out / f"{name}.nii.gz")
        assert image.get_data_dtype() == np.float32, name
        np.testing.assert_allclose(image.affine, source.affine, atol=1e-6)
        assert image.header.get_sform(coded=True)[1] == source.header.get_sform(coded=True)[1]
        assert image.header.get_qform(coded=True)[1] == source.header.get_qform(coded=True)[1]
        data = np.asanyarray(image.dataobj)
        assert data.shape[:3] == mask.shape
        inside = data[mask]
        assert np.all(np.isfinite(inside)), name
        assert np.all(data[~mask] == 0), name
        if name in RANGES:
            low, high = RANGES[name]
            assert np.all((inside > low) & (inside < high)), name
        elif name == "n_std":
            # angular spread in degrees (90 at most): some in every fitted voxel, and a clear axis where
            # the stick holds a fair share of the signal (with little stick the direction is unknown)
            sticks = np.asanyarray(nib.load(out / "f.nii.gz").dataobj)[mask] > 0.3
            assert np.all(inside > 0) and sticks.any(), name
            assert np.all(inside[sticks] < 45.0), name
        elif name.endswith("_std"):
            # some posterior spread in every fitted voxel, far narrower than the parameter's range
            low, high = RANGES[name[: -len("_std")]]
            assert np.all((inside > 0) & (inside < 0.1 * (high - low))), name
        elif name == "S0":
            assert np.all(inside > 0)
        elif name == "n":
            np.testing.assert_allclose(np.linalg.norm(inside, axis=-1), 1.0, atol=1e-4)
        elif name == "cluster_probs":
            np.testing.assert_allclose(inside.sum(-1), 1.0, atol=1e-4)
        elif name == "clusters":
            assert set(np.unique(inside)) <= set(range(1, inside.max().astype(int) + 1))
        elif name == "rmse":
            assert np.all(inside > 0) and np.median(inside) < 0.5  # noisy data are never fitted exactly
    if method == "nlls" and model == "msdki":
        D = nib.load(out / "D.nii.gz").get_fdata()[mask]
        assert 0.3 < np.median(D) < 2.0  # brain tissue, µm²/ms

    # sidecar
    assert meta["varmap_version"] == varmap.__version__
    assert meta["command"].startswith("varmap fit ") and f"--method {method}" in meta["command"]
    assert meta["config"]["model"] == model and meta["config"]["method"] == method
    assert meta["seed"] == 0 and meta["config"]["estimator"]["seed"] == 0
    if method != "nlls":
        assert meta["config"]["options"]["n_epochs"] == int(N_EPOCHS)
        assert meta["config"]["estimator"]["n_epochs"] == int(N_EPOCHS)
        assert 1 <= len(meta["history"]["train_loss"]) <= int(N_EPOCHS)
    for name in ("dwi", "bvals", "bvecs"):
        assert len(meta["inputs"][name]["sha256"]) == 64
        assert meta["inputs"][name]["path"].endswith(small_101d[("dwi", "bvals", "bvecs").index(name)].name)
    assert meta["voxels"]["excluded"] == 0 and meta["voxels"]["fitted"] == mask.sum()
    assert meta["units"]["S0"] and meta["units"].get("D", "µm²/ms") == "µm²/ms"
    assert meta["mask_computed"] is (model == "msdki")
    if model == "msdki":
        assert mask.all()  # a crop inside the brain: no background to remove
    else:
        assert mask.sum() == 200 and len(meta["inputs"]["mask"]["sha256"]) == 64
    assert meta["timings"]["total_s"] > 0 and meta["timings"]["fit_s"] > 0
    assert meta["config"]["sigma"] > 0 and "sigma_source" in meta["config"]
    # small_101D has one b=0 volume: a noise map from the residuals of tensor fits, summarised in fit.json and written
    assert meta["noise"]["method"] == "fit_residual_local" and meta["noise"]["parameters"] == {"radius": 2}
    assert 0 < meta["noise"]["p5"] <= meta["noise"]["median"] <= meta["noise"]["p95"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_apply_reproduces_maps(fitted, model, method):
    _, out, status, applied = fitted[model, method]
    assert status == 0
    assert not (applied / "model.pt").exists()
    meta = json.loads((applied / "fit.json").read_text())
    assert meta["kind"] == "apply" and len(meta["inputs"]["checkpoint"]["sha256"]) == 64
    for path in out.glob("*.nii.gz"):
        original = np.asanyarray(nib.load(path).dataobj)
        again = np.asanyarray(nib.load(applied / path.name).dataobj)
        np.testing.assert_allclose(again, original, rtol=1e-5, atol=1e-5, err_msg=path.name)


def test_checkpoint_loads_with_map_location(fitted):
    _, out, _, _ = fitted["msdki", "vae"]
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    assert saved["model"] == "msdki" and saved["varmap_version"] == varmap.__version__
    assert saved["state"]["method"] == "vae" and "network" in saved["state"]
    assert varmap.Protocol.from_dict(saved["protocol"]).n_measurements == 102


def test_fit_small_64d_as_dipy_ships_it(tmp_path, capsys):
    """dipy's small_64D: its bvecs file is 65 rows of 3 with NaN NaN NaN for the b=0 volume, and the image
    is a crop of the brain whose b=0 is brightest in CSF (Otsu alone kept 155 CSF voxels of 1,000)."""
    from dipy.data import get_fnames

    dwi, bvals, bvecs = get_fnames(name="small_64D")
    out = tmp_path / "out"
    status, _, err = run(["fit", dwi, "--bvals", bvals, "--bvecs", bvecs, "-o", out, "--model", "ball_stick",
                          "--method", "nlls", "--quiet"], capsys)
    assert status == 0, err
    assert nib.load(out / "mask.nii.gz").get_fdata().sum() == 1000
    assert json.loads((out / "fit.json").read_text())["voxels"]["fitted"] == 1000


# ---------------------------------------------------------------------------------------------- synthetic inputs
SHAPE = (5, 4, 3)


def write_nifti(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def write_table(path, rows):
    np.savetxt(path, np.atleast_2d(rows), fmt="%.8g")
    return path


@pytest.fixture
def scan(tmp_path, clinical_protocol):
    """A tiny valid MS-DKI scan (5x4x3 voxels) on the shared two-shell protocol, and its files.

    ``"table"`` holds the b-values (s/mm², as FSL files hold them) and the directions, shape (N, 3).
    """
    rng = np.random.default_rng(3)
    D = rng.uniform(0.6, 1.2, SHAPE)
    model = varmap.get_signal_model("msdki", clinical_protocol)
    signal = add_noise(model.predict({"D": D, "K": np.full(SHAPE, 0.8)}, S0=1000.0), sigma=20.0, rng=rng)
    bvals, bvecs = clinical_protocol.bvals * 1000.0, clinical_protocol.bvecs
    files = {
        "dwi": write_nifti(tmp_path / "dwi.nii.gz", signal),
        "bvals": write_table(tmp_path / "dwi.bval", bvals[None]),
        "bvecs": write_table(tmp_path / "dwi.bvec", bvecs.T),
        "mask": write_nifti(tmp_path / "mask.nii.gz", np.ones(SHAPE)),
        "data": signal,
        "table": (bvals, bvecs),
    }
    return files


def fit_args(scan, out, *extra, dwi=None, bvals=None, bvecs=None, mask=None, noise_map=None):
    args = ["fit", dwi or scan["dwi"], "--bvals", bvals or scan["bvals"], "--bvecs", bvecs or scan["bvecs"],
            "--model", "msdki", "--method", "nlls", "-o", out, "--quiet"]
    if mask is not None:
        args += ["--mask", mask]
    if noise_map is not None:
        args += ["--noise-map", noise_map, "--mask", scan["mask"]]
    return args + list(extra)


def assert_user_error(status, err, *fragments):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("varmap: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_nothing_written(tmp_path, out):
    assert not Path(out).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_synthetic_scan_fits(scan, tmp_path, capsys):
    out = tmp_path / "out"
    status, _, err = run(fit_args(scan, out, mask=scan["mask"]), capsys)
    assert status == 0, err
    assert (out / "fit.json").exists() and (out / "D.nii.gz").exists()
    meta = json.loads((out / "fit.json").read_text())
    assert meta["mask_computed"] is False and "mask" in meta["inputs"]
    assert meta["config"]["sigma_source"] == "noise map estimated from the image (b0_local_pooling)"
    assert nib.load(out / "sigma.nii.gz").get_fdata().min() > 0  # the mask is the whole image


def test_summary_line(scan, tmp_path, capsys):
    out = tmp_path / "out"
    args = [a for a in fit_args(scan, out, mask=scan["mask"]) if a != "--quiet"]
    status, _, err = run(args, capsys)
    assert status == 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("varmap: fit done: msdki/nlls, 60 voxels") and str(out) in last


# Each case: (make(scan, tmp_path) -> the paths it replaces, fragments of the error message); "{n}" in a
# fragment is the scan's number of volumes, "{short}" one less.
BAD_INPUTS = {
    "missing DWI": (lambda s, t: {"dwi": t / "nope.nii.gz"}, ["DWI image", "nope.nii.gz", "does not exist"]),
    "missing bvals": (lambda s, t: {"bvals": t / "nope.bval"}, ["bvals file", "nope.bval", "does not exist"]),
    "missing bvecs": (lambda s, t: {"bvecs": t / "nope.bvec"}, ["bvecs file", "does not exist"]),
    "missing mask": (lambda s, t: {"mask": t / "nope_mask.nii.gz"}, ["mask", "does not exist"]),
    "3-D image": (lambda s, t: {"dwi": write_nifti(t / "t1.nii.gz", s["data"][..., 0])},
                  ["t1.nii.gz", "3 dimensions", "4-D"]),
    "not NIfTI": (lambda s, t: {"dwi": _text(t / "dwi2.nii.gz")}, ["cannot be read as NIfTI"]),
    "bvals count": (lambda s, t: {"bvals": write_table(t / "short.bval", s["table"][0][None, :-1])},
                    ["short.bval", "{short} b-values", "{n} volumes"]),
    "bvecs count": (lambda s, t: {"bvecs": write_table(t / "short.bvec", s["table"][1].T[:, :-1])},
                    ["short.bvec", "3x{short}", "3 rows of {n}"]),
    "bvecs shape": (lambda s, t: {"bvecs": write_table(t / "two.bvec", s["table"][1].T[:2])},
                    ["two.bvec", "2x{n}", "3 rows"]),
    "b-value units": (lambda s, t: {"bvals": write_table(t / "odd.bval", s["table"][0][None] * 0.035)},
                      ["odd.bval", "unit of the b-values"]),
    "b-values in s/m2": (lambda s, t: {"bvals": write_table(t / "si.bval", s["table"][0][None] * 1e6)},
                         ["si.bval", "should be in s/mm²", "look like s/m²", "divide them by 10⁶"]),
    "b-values in ms/um2": (lambda s, t: {"bvals": write_table(t / "ms.bval", s["table"][0][None] / 1000)},
                           ["ms.bval", "should be in s/mm²", "look like ms/µm²", "multiply them by 1000"]),
    "truncated DWI": (lambda s, t: {"dwi": _damaged(s["dwi"], t / "cut.nii.gz", cut=True)},
                      ["DWI image", "cut.nii.gz", "cannot be read", "truncated or corrupt"]),
    "corrupt DWI": (lambda s, t: {"dwi": _damaged(s["dwi"], t / "bad.nii.gz", cut=False), "mask": s["mask"]},
                    ["DWI image", "bad.nii.gz", "cannot be read", "truncated or corrupt"]),
    "missing noise map": (lambda s, t: {"noise_map": t / "nope_sigma.nii.gz"}, ["noise map", "does not exist"]),
    "noise map shape": (lambda s, t: {"noise_map": write_nifti(t / "n.nii.gz", np.ones((5, 4, 4)))},
                        ["noise map", "n.nii.gz", "(5, 4, 4)", "(5, 4, 3)"]),
    "noise map not positive": (lambda s, t: {"noise_map": write_nifti(t / "n0.nii.gz", np.zeros(SHAPE))},
                               ["noise map", "n0.nii.gz", "60 <= 0 of 60", "--noise-map"]),
    "no b=0, two shells": (lambda s, t: _without_b0(*s["table"], t),
                           ["without a b=0 measurement needs at least 3 non-zero shells", "smallest b-value 1000"]),
    "mask shape": (lambda s, t: {"mask": write_nifti(t / "m.nii.gz", np.ones((5, 4, 4)))},
                   ["m.nii.gz", "(5, 4, 4)", "(5, 4, 3)"]),
    "empty mask": (lambda s, t: {"mask": write_nifti(t / "m0.nii.gz", np.zeros(SHAPE))}, ["selects no voxel"]),
}


def _damaged(source, path, *, cut):
    """A copy of the image ``source`` cut in half (``cut``) or with bytes overwritten in the middle."""
    raw = bytearray(source.read_bytes())
    middle = len(raw) // 2
    if cut:
        raw = raw[:middle]
    else:
        raw[middle : middle + 32] = b"x" * 32
    path.write_bytes(bytes(raw))
    return path


def _text(path):
    path.write_text("not an image")
    return path


def _without_b0(bvals, bvecs, folder):
    """FSL files of the scan's table with every b=0 measurement turned into b=1000 along x: two shells and
    no b=0, too few for MS-DKI to determine S0 besides D and K."""
    b0 = bvals == 0
    return {"bvals": write_table(folder / "nob0.bval", np.where(b0, 1000.0, bvals)[None]),
            "bvecs": write_table(folder / "nob0.bvec", np.where(b0[:, None], [1.0, 0.0, 0.0], bvecs).T)}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input(scan, tmp_path, capsys, case):
    make, fragments = BAD_INPUTS[case]
    paths = make(scan, tmp_path)
    out = tmp_path / "out"
    status, _, err = run(fit_args(scan, out, **paths), capsys)
    n = len(scan["table"][0])
    assert_user_error(status, err, *(fragment.format(n=n, short=n - 1) for fragment in fragments))
    assert_nothing_written(tmp_path, out)


def test_bad_input_debug_shows_traceback(scan, tmp_path, capsys):
    status, _, err = run(fit_args(scan, tmp_path / "out", "--debug", dwi=tmp_path / "nope.nii.gz"), capsys)
    assert status == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("varmap: error:")


def test_existing_output_refused_and_untouched(scan, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "D.nii.gz").write_text("precious")
    status, _, err = run(fit_args(scan, out), capsys)
    assert_user_error(status, err, "already exists", "--force")
    assert [p.name for p in out.iterdir()] == ["D.nii.gz"] and (out / "D.nii.gz").read_text() == "precious"
    status, _, err = run(fit_args(scan, out, "--force", mask=scan["mask"]), capsys)
    assert status == 0, err
    assert (out / "fit.json").exists() and nib.load(out / "D.nii.gz").shape == SHAPE
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_nonfinite_voxels_are_excluded_and_counted(scan, tmp_path, capsys):
    data = scan["data"].copy()
    data[0, 0, 0, 5] = np.nan
    data[1, 1, 1, 3] = np.inf
    data[2, 2, 2, :2] = 0.0  # b=0 signal zero
    dwi = write_nifti(tmp_path / "holes.nii.gz", data)
    out = tmp_path / "out"
    status, _, err = run(fit_args(scan, out, dwi=dwi, mask=scan["mask"]), capsys)
    assert status == 0, err
    assert "3 of 60 mask voxels are excluded" in err
    meta = json.loads((out / "fit.json").read_text())
    assert meta["voxels"] == {"in_mask": 60, "fitted": 57, "excluded": 3, "excluded_nonfinite": 2,
                              "excluded_nonpositive_b0": 1}
    D = nib.load(out / "D.nii.gz").get_fdata()
    assert D[0, 0, 0] == 0 and D[1, 1, 1] == 0 and D[2, 2, 2] == 0 and np.all(D[3:] > 0)


def test_option_that_does_not_apply(scan, tmp_path, capsys):
    out = tmp_path / "out"
    status, _, err = run(fit_args(scan, out, "--n-epochs", "3"), capsys)
    assert_user_error(status, err, "--n-epochs", "do not apply to method nlls")
    assert_nothing_written(tmp_path, out)


def test_unknown_choice_is_a_usage_error(scan, tmp_path, capsys):
    args = fit_args(scan, tmp_path / "out")
    args[args.index("msdki")] = "ivim"
    status, _, err = run(args, capsys)
    assert status == 2 and "invalid choice: 'ivim'" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu(scan, tmp_path, capsys):
    out = tmp_path / "out"
    status, _, err = run(fit_args(scan, out, "--device", "cuda"), capsys)
    assert_user_error(status, err, "no CUDA GPU", "use device cpu")
    assert_nothing_written(tmp_path, out)


def test_interrupted_run_leaves_no_output(scan, tmp_path, capsys, monkeypatch):
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return Path(args[1])

    monkeypatch.setattr(varmap.io, "save_map", interrupted)
    out = tmp_path / "out"
    status, _, err = run(fit_args(scan, out, mask=scan["mask"]), capsys)
    assert status == 130 and "interrupted" in err
    assert_nothing_written(tmp_path, out)


def test_apply_to_other_protocol(scan, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(fit_args(scan, out, mask=scan["mask"]), capsys)[0] == 0
    bvals = scan["table"][0]
    other = hcp_protocol(n_b0=2, n_directions=8, shells=(1000.0, 2000.0), seed=1)  # other directions
    np.testing.assert_array_equal(other.bvals * 1000.0, bvals)
    bvecs = write_table(tmp_path / "other.bvec", other.bvecs.T)
    applied = tmp_path / "applied"
    status, _, err = run(["apply", out / "model.pt", scan["dwi"], "--bvals", scan["bvals"], "--bvecs", bvecs,
                          "-o", applied, "--quiet"], capsys)
    assert_user_error(status, err, "differs from the one the checkpoint", "same protocol")
    assert not applied.exists()
    not_checkpoint = _text(tmp_path / "model.pt")
    status, _, err = run(["apply", not_checkpoint, scan["dwi"], "--bvals", scan["bvals"], "--bvecs",
                          scan["bvecs"], "-o", applied, "--quiet"], capsys)
    assert_user_error(status, err, "cannot be read", "model.pt written by varmap fit")
    assert not applied.exists()


def test_method_flags_come_from_the_option_tables(capsys):
    from varmap.estimators.options import OPTIONS

    assert cli.main(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    declared = {option.flag for options in OPTIONS.values() for option in options if option.cli}
    hidden = {option.flag for options in OPTIONS.values() for option in options if not option.cli}
    assert declared == {option.flag for option, _ in cli.method_flags().values()}
    for flag in declared:
        assert flag in text, flag
    for flag in hidden - declared:
        assert flag not in text, flag


def test_only_given_method_flags_are_passed(monkeypatch, tmp_path):
    import varmap.pipeline

    seen = {}
    monkeypatch.setattr(varmap.pipeline, "fit_image", lambda *args, **kwargs: seen.update(kwargs))
    assert cli.main(["fit", "dwi.nii.gz", "--bvals", "b", "--bvecs", "v", "--model", "msdki", "--method", "gmvae",
                     "-o", str(tmp_path / "out"), "--n-epochs", "7", "--y-sampler", "gumbel", "--beta", "0.5"]) == 0
    options = {k: v for k, v in seen.items() if k in cli.method_flags()}
    assert options == {"n_epochs": 7, "y_sampler": "gumbel", "beta": 0.5}
    assert seen["command"].startswith("varmap fit dwi.nii.gz ")


def test_method_flag_of_each_kind():
    import argparse

    from varmap.estimators.options import Option

    parser = argparse.ArgumentParser()
    group = parser.add_argument_group("options")
    cli._add_method_option(group, Option("temperature", float, (1.0, 0.3), "pair", n_values=2), ["gmvae"])
    cli._add_method_option(group, Option("centred", bool, False, "a switch"), ["vae"])
    cli._add_method_option(group, Option("likelihood", str, "rician", "noise", choices=("rician", "gaussian")),
                           list(cli.OPTIONS))
    assert vars(parser.parse_args([])) == {}
    args = parser.parse_args(["--temperature", "2", "0.5", "--no-centred", "--likelihood", "gaussian"])
    assert vars(args) == {"temperature": [2.0, 0.5], "centred": False, "likelihood": "gaussian"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--likelihood", "poisson"])


# ---------------------------------------------------------------------------------------------- other commands
def test_help_and_usage(capsys):
    assert cli.main(["--help"]) == 0
    assert "fit" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert cli.main(["fit", "--help"]) == 0
    assert "--n-posterior-samples" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0
    assert varmap.__version__ in capsys.readouterr().out


def test_bench_and_demo_call_the_study(monkeypatch, tmp_path, capsys):
    import varmap.evaluation.study as study

    calls = {}

    def fake_study(**kwargs):
        calls["bench"] = kwargs
        return study.StudyResult(rows=[])

    monkeypatch.setattr(study, "run_study", fake_study)
    monkeypatch.setattr(study, "run_demo", lambda **kwargs: calls.setdefault("demo", kwargs))
    assert cli.main(["bench", "msdki", "--quiet"]) == 0
    assert calls["bench"] == {
        "model": "msdki", "snrs": [5.0, 10.0, 20.0, 50.0], "n_voxels": 10000,
        "methods": ["nlls", "selfsup", "vae", "gmvae"], "seed": 0, "output_dir": Path("bench_output/msdki"),
        "n_oracle": 2000, "force": False, "progress": False, "n_jobs": min(4, os.cpu_count() or 1),
        "noise_variation": 1.0, "S0_range": None, "sigma_known": False, "protocol": "hcp",
    }
    calls.clear()
    assert cli.main(["bench", "msdki", "--quiet", "--noise-variation", "4", "--s0-range", "600", "1400",
                     "--sigma-known"]) == 0
    variant = calls["bench"]
    assert variant["noise_variation"] == 4.0 and tuple(variant["S0_range"]) == (600.0, 1400.0)
    assert variant["sigma_known"] is True
    calls.clear()
    assert cli.main(["bench", "ball_stick", "--snrs", "10", "30", "--n-voxels", "500", "--methods", "nlls",
                     "--seed", "4", "--n-oracle", "0", "-o", str(tmp_path / "b"), "--force", "--jobs", "1"]) == 0
    bench = calls["bench"]
    assert bench["snrs"] == [10.0, 30.0] and bench["n_voxels"] == 500 and bench["methods"] == ["nlls"]
    assert bench["seed"] == 4 and bench["n_oracle"] == 0 and bench["output_dir"] == tmp_path / "b"
    assert bench["force"] is True and bench["progress"] is True and bench["n_jobs"] == 1
    assert cli.main(["demo", "-o", str(tmp_path / "d"), "--force", "--jobs", "3"]) == 0
    # progress bars of parallel fits would garble each other
    assert calls["demo"] == {"output_dir": tmp_path / "d", "force": True, "progress": False, "n_jobs": 3}


def test_study_errors_are_user_errors(monkeypatch, capsys):
    import varmap.evaluation.study as study

    def refuse(**kwargs):
        raise FileExistsError("bench_output/msdki exists; choose another folder or pass --force to replace it.")

    monkeypatch.setattr(study, "run_study", refuse)
    status = cli.main(["bench", "msdki"])
    assert_user_error(status, capsys.readouterr().err, "pass --force")
