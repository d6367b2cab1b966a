"""Whole-brain MS-DKI mapping: time and peak memory of ``varmap.fit_image`` by method, against dipy.

The benchmark of the issue "A whole brain in less time than dipy, in a fraction of the memory".  The
data are either

- the project's digital brain phantom (``--phantom VOXEL_SIZE_MM``: :func:`varmap.phantom.make_phantom`
  written by :func:`varmap.phantom.write_phantom`, as ``varmap phantom`` does: float32 ``.nii.gz``,
  HCP protocol of 18 b=0 and 90 directions at b = 1000, 2000, 3000 s/mm², ground truth in ``truth/``), or
- a synthetic ellipsoidal "brain" (default) of at least 200,000 voxels, stored as scaled int16 NIfTI
  like HCP data, with signals from :func:`varmap.signal_models.msdki_signal` and noise from
  :func:`varmap.simulation.add_noise`.

The data are made in a child process, so this process stays small.  Every method then maps the whole
image in its own child process, so that each peak resident memory (``VmHWM``) is that method's alone:
varmap's nlls, selfsup, vae and gmvae through :func:`varmap.fit_image` (read, noise map, fit, goodness
of fit, maps, checkpoint and figure, with the estimators' own training defaults unless ``--n-epochs``
says otherwise), and dipy's ``MeanDiffusionKurtosisModel`` the way its examples do (``img.get_fdata()``,
``fit(data, mask=mask)``, the two maps saved).

Per method the table gives the seconds of reading, training, inference, writing (maps, checkpoint,
figure) and everything else, the rest of the total (input checks, mask, noise map, estimator set-up,
data preparation, maps, input checksums; dipy's gradient table); voxels per second of the fit
(training + inference) and of inference alone; the peak resident memory; time and memory as ratios to
dipy's; the memory bound of the issue, 1 GB + 2 x (masked voxels x volumes x 4 bytes), and whether the
method stayed within it; and the median absolute error of D and K against the truth (pure white and
grey matter, tissue fraction >= 0.9, for the phantom; all non-CSF voxels for the ellipsoid), computed
here from the written maps.  ``--output`` writes the table and, beside it, a JSON file of every row and
the configuration.

Examples::

    python benchmarks/bench_image_fit.py --phantom 2 --output benchmarks/results/image_fit_2mm.md
    python benchmarks/bench_image_fit.py --phantom 1.25 --output benchmarks/results/image_fit_1.25mm.md
    python benchmarks/bench_image_fit.py --phantom 4 --crop 12 12 8 --methods nlls gmvae --n-epochs 2
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from varmap.evaluation.runner import (
    Stages,
    add_speed_ratios,
    emit_table,
    machine_summary,
    markdown_table,
    measure,
    process_peak_rss_mb,
)
from varmap.simulation import add_noise, fibonacci_sphere

METHODS = ("nlls", "selfsup", "vae", "gmvae")
DIPY = "dipy MS-DKI (WLS)"
HCP_SHELLS = (1000.0, 2000.0, 3000.0)
ELLIPSOID_VOXEL_MM = 1.25
#: Parameters whose errors are reported.
PARAMETERS = ("D", "K")
#: Tissue fraction from which a phantom voxel counts as pure white or grey matter.
PURITY = 0.9
#: Fixed part of the memory bound of the issue, MiB (1 GB).
BOUND_BASE_MB = 1024.0
#: Timed stages of every row, in table order; ``other`` is the rest of ``total_s``.
STAGES = ("read", "train", "infer", "write")
#: The table's columns before the error columns: title, row key and format of the value.
COLUMNS = (
    ("method", "method", ""),
    ("device", "device", ""),
    ("voxels", "n_voxels", ",d"),
    ("read (s)", "read_s", ".2f"),
    ("train (s)", "train_s", ".2f"),
    ("infer (s)", "infer_s", ".2f"),
    ("write (s)", "write_s", ".2f"),
    ("other (s)", "other_s", ".2f"),
    ("total (s)", "total_s", ".2f"),
    ("fit (voxels/s)", "fit_voxels_per_s", ",.0f"),
    ("inference (voxels/s)", "infer_voxels_per_s", ",.0f"),
    ("peak RSS (MB)", "peak_rss_mb", ",.0f"),
    ("time / dipy", "time_ratio", ".2f"),
    ("memory / dipy", "memory_ratio", ".2f"),
    ("memory bound (MB)", "memory_bound_mb", ",.0f"),
    ("within bound", "within_bound", ""),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line; refuses an existing ``--output`` (or its JSON) without ``--force``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--phantom", type=float, default=None, metavar="VOXEL_SIZE_MM",
                      help="fit the digital brain phantom at this voxel size, e.g. 2 or 1.25 (default: the ellipsoid)")
    data.add_argument("--crop", type=int, nargs=3, default=None, metavar=("NX", "NY", "NZ"),
                      help="phantom: keep a centred box of this many voxels")
    data.add_argument("--noise-field", action="store_true", help="phantom: noise level varying over the head (1-3x)")
    data.add_argument("--shape", type=int, nargs=3, default=[110, 110, 40], metavar=("X", "Y", "Z"),
                      help="ellipsoid: image grid; the brain is the inscribed ellipsoid "
                      "(default 110 110 40: 253k voxels)")
    data.add_argument("--radius", type=float, default=0.99,
                      help="ellipsoid: half-axes of the brain as a fraction of the grid's (default 0.99)")
    data.add_argument("--compress", action="store_true", help="ellipsoid: store the DWI as .nii.gz (default .nii)")
    data.add_argument("--snr", type=float, default=None,
                      help="b=0 SNR of white matter (default 10 for the phantom, as varmap phantom; "
                      "20 for the ellipsoid)")
    data.add_argument("--seed", type=int, default=0, help="seed of the data and of every method (default 0)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="varmap methods")
    parser.add_argument("--no-dipy", dest="dipy", action="store_false", help="skip dipy's MS-DKI fit")
    parser.add_argument("--n-epochs", type=int, default=None,
                        help="training epochs of the network methods (default: the estimators' own, early stopping)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="varmap device")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the data (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=None,
                        help="also write the Markdown table here, and rows and configuration as JSON beside it")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return args
    if args.output is not None and not args.force and any(p.exists() for p in output_paths(args.output)):
        parser.error(f"{args.output} or its JSON exists; pass --force to overwrite them.")
    if args.phantom is None and (args.crop is not None or args.noise_field):
        parser.error("--crop and --noise-field need --phantom.")
    if args.snr is None:
        args.snr = 20.0 if args.phantom is None else 10.0
    if min(args.shape) < 4 or args.snr <= 0 or not 0 < args.radius <= 1 or (args.n_epochs or 1) < 1:
        parser.error("--shape needs at least 4 voxels per axis, --snr > 0, 0 < --radius <= 1, --n-epochs >= 1.")
    return args


def output_paths(output: Path) -> tuple[Path, Path]:
    """The Markdown table and the JSON beside it (same stem)."""
    return output, output.with_suffix(".json")


def configuration(args: argparse.Namespace) -> dict:
    """The settings the children read and the JSON records (paths as text)."""
    skip = {"child", "output", "force"}
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
            if key not in skip}


# ---------------------------------------------------------------------------------------------- data
def simulate_image(
    folder: Path, shape: tuple[int, int, int], *, snr: float, seed: int, compress: bool, radius: float = 0.99
) -> dict:
    """Write an ellipsoid's dwi, bvals, bvecs, mask and true maps; returns their paths and sizes.

    Tissue: a smooth white/grey-matter pattern (D 0.7-1.2 µm²/ms, K 0.5-1.0, inside the kurtosis
    expansion's valid range at b = 3000 s/mm²) with a CSF core (D = 3, K = 0); S0 = 1000 in tissue,
    2000 in CSF; Rician noise of σ = 1000 / snr.  The image is int16 with a scale factor, written one
    volume at a time into a memory-mapped ``.nii`` so that even an HCP-size image is simulated in little
    memory (``compress`` builds it in memory and writes ``.nii.gz``).
    """
    import nibabel as nib
    import torch

    from varmap import Protocol
    from varmap.signal_models import msdki_signal

    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) / radius for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    brain = x**2 + y**2 + z**2 < 1.0
    csf = (x / 0.25) ** 2 + (y / 0.4) ** 2 + (z / 0.5) ** 2 < 1
    pattern = 0.5 + 0.5 * np.sin(6 * x) * np.cos(5 * y) * np.cos(3 * z)
    D = np.where(csf, 3.0, 0.7 + 0.5 * pattern).astype(np.float32)
    K = np.where(csf, 0.0, 1.0 - 0.5 * pattern).astype(np.float32)
    del x, y, z, pattern
    bvals = np.concatenate([np.zeros(18), np.repeat(HCP_SHELLS, 90)])
    bvecs = np.concatenate([np.zeros((18, 3)), np.tile(fibonacci_sphere(90), (len(HCP_SHELLS), 1))])
    order = rng.permutation(bvals.size)  # interleave b=0 and shells, as HCP does
    bvals, bvecs = bvals[order], bvecs[order]
    protocol = Protocol.from_bvals_bvecs(bvals, bvecs)
    sigma = 1000.0 / snr
    inside = np.flatnonzero(brain)
    D_in = torch.as_tensor(D.ravel()[inside], dtype=torch.float64)
    K_in = torch.as_tensor(K.ravel()[inside], dtype=torch.float64)
    S0_in = np.where(csf.ravel()[inside], 2000.0, 1000.0)
    slope = 0.25  # int16 range 8191 in signal units, above S0 + noise
    affine = np.diag([ELLIPSOID_VOXEL_MM] * 3 + [1.0])
    suffix = ".nii.gz" if compress else ".nii"
    paths = {"dwi": folder / f"dwi{suffix}", "bvals": folder / "dwi.bval", "bvecs": folder / "dwi.bvec",
             "mask": folder / "mask.nii.gz", "truth": folder / "truth.npz"}
    header = nib.Nifti1Header()
    header.set_data_shape((*shape, bvals.size))
    header.set_data_dtype(np.int16)
    header.set_sform(affine, 1)
    header.set_qform(affine, 1)
    header.set_slope_inter(slope, 0.0)
    if compress:
        data = np.zeros((*shape, bvals.size), dtype=np.int16)
    else:
        header.set_data_offset(352)
        with open(paths["dwi"], "wb") as handle:
            header.write_to(handle)
            handle.write(b"\0" * (352 - handle.tell()))
        data = np.memmap(paths["dwi"], dtype=np.int16, mode="r+", offset=352, shape=(*shape, bvals.size), order="F")
    for volume in range(bvals.size):
        b = torch.as_tensor(protocol.bvals[volume : volume + 1], dtype=torch.float64)
        signal = np.zeros(brain.size, dtype=np.float64)
        signal[inside] = S0_in * msdki_signal(b, D_in, K_in)[:, 0].numpy()
        noisy = add_noise(signal, sigma=sigma, kind="rician", rng=rng)
        data[..., volume] = np.clip(np.round(noisy / slope), 0, 32767).astype(np.int16).reshape(shape)
    if compress:
        nib.save(nib.Nifti1Image(data, affine, header), paths["dwi"])
    else:
        data.flush()
    del data
    np.savetxt(paths["bvals"], bvals[None], fmt="%g")
    np.savetxt(paths["bvecs"], bvecs.T, fmt="%.8f")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), paths["mask"])
    np.savez(paths["truth"], D=D, K=K, mask=brain)
    return {"kind": "ellipsoid", "paths": {k: str(v) for k, v in paths.items()}, "shape": list(shape),
            "n_voxels": int(brain.sum()), "n_volumes": int(bvals.size), "voxel_size_mm": ELLIPSOID_VOXEL_MM,
            "format": f"int16 {suffix}"}


def write_brain_phantom(
    folder: Path, voxel_size: float, *, snr: float, seed: int, crop: list[int] | None, noise_field: bool
) -> dict:
    """Write the digital brain phantom (MS-DKI) as ``varmap phantom`` does; returns its paths and sizes.

    Parameters
    ----------
    folder : Path
        The phantom goes into ``folder / "phantom"`` (replaced if present).
    voxel_size : float
        Isotropic voxel size, mm.
    snr : float
        b=0 SNR of pure white matter.
    seed : int
    crop : list of int, optional
        Sizes of a box around the centre of the brain.
    noise_field : bool
        Noise level varying smoothly over the head.

    Returns
    -------
    dict
        ``kind``, ``paths`` (dwi, bvals, bvecs, mask, truth folder), ``shape``, ``n_voxels``,
        ``n_volumes``, ``voxel_size_mm``, ``format``.
    """
    from varmap.phantom import make_phantom, write_phantom

    phantom = make_phantom(model="msdki", voxel_size=voxel_size, snr=snr, seed=seed, crop=crop,
                           noise_field=noise_field)
    root = folder / "phantom"
    write_phantom(phantom, root, force=True)
    paths = {"dwi": root / "dwi.nii.gz", "bvals": root / "dwi.bval", "bvecs": root / "dwi.bvec",
             "mask": root / "mask.nii.gz", "truth": root / "truth"}
    return {"kind": "phantom", "paths": {k: str(v) for k, v in paths.items()}, "shape": list(phantom.shape),
            "n_voxels": phantom.n_voxels, "n_volumes": int(phantom.dwi.shape[-1]), "voxel_size_mm": voxel_size,
            "format": "float32 .nii.gz"}


def make_data(settings: argparse.Namespace) -> dict:
    """The data of ``settings``: the phantom with ``phantom`` set, else the ellipsoid."""
    workdir = Path(settings.workdir)
    if settings.phantom is not None:
        return write_brain_phantom(workdir, settings.phantom, snr=settings.snr, seed=settings.seed,
                                   crop=settings.crop, noise_field=settings.noise_field)
    return simulate_image(workdir, tuple(settings.shape), snr=settings.snr, seed=settings.seed,
                          compress=settings.compress, radius=settings.radius)


# ---------------------------------------------------------------------------------------------- children
def stage_row(method: str, device: str, n_voxels: int, stages: dict[str, float], total_s: float, output: Path) -> dict:
    """One method's measured row.

    Returns
    -------
    dict
        ``method``, ``device``, ``n_voxels``, the seconds of :data:`STAGES` (``read_s``...; missing ones
        0), ``other_s`` (the rest of ``total_s``), ``total_s`` and ``output``, the folder of the maps.
    """
    seconds = {f"{stage}_s": stages.get(stage, 0.0) for stage in STAGES}
    return {"method": method, "device": device, "n_voxels": int(n_voxels), **seconds,
            "other_s": total_s - sum(seconds.values()), "total_s": total_s, "output": str(output)}


def varmap_stages(timings: dict[str, float]) -> dict[str, float]:
    """The seconds of :data:`STAGES` in ``fit_image``'s timings.

    Parameters
    ----------
    timings : dict of float
        ``result.metadata["timings"]`` (``check_s``, ``mask_s``, ``noise_s``, ``read_s``, ``fit_s``
        and its split ``fit_prepare_s``, ``fit_train_s``, ``fit_infer_s``, ``maps_s``, ``checksum_s``,
        ``write_s``, ``figure_s``, ``total_s``).

    Returns
    -------
    dict of float
        ``read``, ``train``, ``infer`` and ``write`` (maps and checkpoint, plus the figure); the other
        stages are left to the rest of the total (:func:`stage_row`).
    """
    return {"read": timings["read_s"], "train": timings.get("fit_train_s", 0.0), "infer": timings["fit_infer_s"],
            "write": timings.get("write_s", 0.0) + timings.get("figure_s", 0.0)}


def child_varmap(method: str, settings: argparse.Namespace, data: dict) -> dict:
    """Map the image with ``varmap.fit_image`` and ``method``: maps, checkpoint and figure written."""
    import varmap
    from varmap.estimators.options import method_options

    paths = data["paths"]
    options = {}
    if settings.n_epochs is not None and "n_epochs" in method_options(method):
        options["n_epochs"] = settings.n_epochs
    output = Path(settings.workdir) / f"out_{method}"
    with measure() as wall:
        result = varmap.fit_image(
            paths["dwi"], paths["bvals"], paths["bvecs"], mask=paths["mask"], model="msdki", method=method,
            output_dir=output, force=True, seed=settings.seed, device=settings.device, progress=False, **options,
        )
    stages = varmap_stages(result.metadata["timings"])
    return stage_row(f"varmap {method}", result.metadata["config"]["device"], result.n_voxels, stages, wall.seconds,
                     output)


def child_dipy(settings: argparse.Namespace, data: dict) -> dict:
    """Map the image with dipy's ``MeanDiffusionKurtosisModel`` as its examples do; D and K written."""
    import nibabel as nib
    from dipy.core.gradients import gradient_table
    from dipy.reconst.msdki import MeanDiffusionKurtosisModel

    paths = data["paths"]
    output = Path(settings.workdir) / "out_dipy"
    stages = Stages()
    with measure() as wall:
        with stages("read"):
            image = nib.load(paths["dwi"])
            dwi = image.get_fdata()  # as dipy's examples do: the whole image as float64
            mask = np.asanyarray(nib.load(paths["mask"]).dataobj) > 0
        bvals, bvecs = np.loadtxt(paths["bvals"]), np.loadtxt(paths["bvecs"]).T
        model = MeanDiffusionKurtosisModel(gradient_table(bvals, bvecs=bvecs))
        with stages("infer"):
            fit = model.fit(dwi, mask=mask)
            maps = {"D": np.asarray(fit.msd, dtype=np.float32) * 1000.0,  # mm²/s -> µm²/ms
                    "K": np.asarray(fit.msk, dtype=np.float32)}
        with stages("write"):
            output.mkdir(exist_ok=True)
            for name, array in maps.items():
                nib.save(nib.Nifti1Image(array, image.affine), output / f"{name}.nii.gz")
    return stage_row(DIPY, "cpu", int(mask.sum()), stages.seconds, wall.seconds, output)


def child_baseline() -> dict:
    """Python with varmap, torch, nibabel, dipy and matplotlib imported: the floor of every row's memory."""
    import dipy.reconst.msdki  # noqa: F401
    import matplotlib  # noqa: F401
    import nibabel  # noqa: F401
    import torch  # noqa: F401

    import varmap
    from varmap.provenance import environment

    return {"environment": environment(), "varmap": varmap.__version__}


def run_as_child(name: str, workdir: Path) -> None:
    """Do child ``name``'s work on the settings in ``workdir``; print its row, with its peak memory, as JSON."""
    settings = argparse.Namespace(**json.loads((workdir / "config.json").read_text()))
    if name == "simulate":
        (workdir / "data.json").write_text(json.dumps(make_data(settings)))
        row = {}
    elif name == "baseline":
        row = child_baseline()
    else:
        data = json.loads((workdir / "data.json").read_text())
        row = child_dipy(settings, data) if name == "dipy" else child_varmap(name, settings, data)
    print(json.dumps({**row, "peak_rss_mb": process_peak_rss_mb()}))


def run_child(name: str, workdir: Path) -> dict:
    """Run child ``name`` in a fresh Python process; returns the row it printed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--workdir", str(workdir)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- evaluation
def load_truth(data: dict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The true maps of :data:`PARAMETERS` and the voxel groups errors are reported in.

    Returns
    -------
    truth : dict of ndarray
        ``D`` (µm²/ms) and ``K`` on the image grid.
    groups : dict of ndarray of bool
        Phantom: ``WM`` and ``GM``, brain voxels whose fraction of that tissue is at least
        :data:`PURITY`.  Ellipsoid: ``tissue``, brain voxels outside the CSF core (whose K is not
        identifiable at these SNRs).
    """
    import nibabel as nib

    if data["kind"] == "ellipsoid":
        saved = np.load(data["paths"]["truth"])
        return {name: saved[name] for name in PARAMETERS}, {"tissue": saved["mask"] & ~(saved["D"] > 2.5)}
    folder = Path(data["paths"]["truth"])

    def image(name: str) -> np.ndarray:
        return np.asanyarray(nib.load(folder / f"{name}.nii.gz").dataobj)

    mask = np.asanyarray(nib.load(data["paths"]["mask"]).dataobj) > 0
    groups = {tissue: mask & (image(f"fraction_{tissue.lower()}") >= PURITY) for tissue in ("WM", "GM")}
    return {name: image(name) for name in PARAMETERS}, groups


def median_abs_error(estimate: np.ndarray, truth: np.ndarray, group: np.ndarray) -> float:
    """Median absolute error in ``group`` (NaN if it is empty); a NaN estimate counts as an infinite error."""
    if not group.any():
        return math.nan
    error = np.abs(estimate[group].astype(np.float64) - truth[group])
    return float(np.median(np.nan_to_num(error, nan=np.inf)))


def add_errors(rows: list[dict], data: dict) -> dict[str, int]:
    """Add ``<parameter>_error_<group>`` to every row, from its written maps; returns the groups' voxel counts."""
    import nibabel as nib

    truth, groups = load_truth(data)
    for row in rows:
        for parameter, true in truth.items():
            estimate = np.asanyarray(nib.load(Path(row["output"]) / f"{parameter}.nii.gz").dataobj)
            for group, voxels in groups.items():
                row[f"{parameter}_error_{group}"] = median_abs_error(estimate, true, voxels)
    return {group: int(voxels.sum()) for group, voxels in groups.items()}


def memory_bound_mb(data: dict) -> float:
    """The issue's memory bound: 1 GB + 2 x (masked voxels x volumes x 4 bytes), MiB."""
    return BOUND_BASE_MB + 2 * data["n_voxels"] * data["n_volumes"] * 4 / 2**20


def add_rates(rows: list[dict], data: dict) -> None:
    """Add voxels per second, ratios to dipy (NaN without dipy) and the memory bound to every row."""
    bound = memory_bound_mb(data)
    for row in rows:
        fit_s = row["train_s"] + row["infer_s"]
        row["fit_voxels_per_s"] = row["n_voxels"] / fit_s if fit_s > 0 else math.inf
        row["infer_voxels_per_s"] = row["n_voxels"] / row["infer_s"] if row["infer_s"] > 0 else math.inf
        row["memory_bound_mb"] = bound
        row["within_bound"] = row["peak_rss_mb"] <= bound
        row["time_ratio"] = row["memory_ratio"] = math.nan
    if any(row["method"] == DIPY for row in rows):
        add_speed_ratios(rows, DIPY)


# ---------------------------------------------------------------------------------------------- report
def cell(value: object, spec: str) -> str:
    """A table cell: text as is, booleans yes/no, NaN as a dash, numbers in format ``spec``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return format(value, spec)


def data_line(data: dict, settings: dict) -> str:
    """What was fitted: data, grid, brain voxels, volumes, voxel size, SNR, seed, training."""
    if data["kind"] == "phantom":
        extras = "".join([f", crop {'x'.join(map(str, settings['crop']))}" if settings["crop"] else "",
                          ", noise field (1-3x)" if settings["noise_field"] else ""])
        what = f"Digital brain phantom (MS-DKI{extras})"
    else:
        what = "Synthetic ellipsoidal brain (MS-DKI)"
    epochs = (f"--n-epochs {settings['n_epochs']}" if settings["n_epochs"] is not None
              else "the estimators' default training (early stopping)")
    return (f"{what}: grid {'x'.join(map(str, data['shape']))}, {data['n_voxels']:,} brain voxels x "
            f"{data['n_volumes']} volumes, {data['voxel_size_mm']:g} mm, {data['format']}, SNR {settings['snr']:g}, "
            f"seed {settings['seed']}; network methods: {epochs}; each method in its own process.")


def markdown(rows: list[dict], groups: dict[str, int], data: dict, settings: dict, baseline: dict,
             simulate_s: float) -> str:
    """The benchmark's report: data line, machine line, table and notes."""
    errors = [(f"{p} err {g}", f"{p}_error_{g}", ".3f") for p in PARAMETERS for g in groups]
    columns = [*COLUMNS, *errors]
    table = [[cell(row[key], spec) for _, key, spec in columns] for row in rows]
    masked_mb = data["n_voxels"] * data["n_volumes"] * 4 / 2**20
    full_mb = int(np.prod(data["shape"])) * data["n_volumes"] * 8 / 2**20
    where = (f"pure tissue, fraction >= {PURITY:g}" if data["kind"] == "phantom"
             else "the brain outside the CSF core")
    counts = ", ".join(f"{group} {n:,}" for group, n in groups.items())
    lines = [
        data_line(data, settings),
        f"Machine: {machine_summary(baseline['environment'])}; varmap {baseline['varmap']}.",
        "",
        *markdown_table([title for title, _, _ in columns], table),
        "",
        "write: maps, checkpoint and figure; other: the rest of the total (input checks, mask, noise map, "
        "estimator set-up, data preparation, maps, input checksums, fit.json). fit (voxels/s): over train + infer.",
        f"Memory bound: 1 GB + 2 x the masked voxels as float32 ({masked_mb:,.0f} MB); the whole image as "
        f"float64 is {full_mb:,.0f} MB; Python with varmap, torch and dipy imported peaks at "
        f"{baseline['peak_rss_mb']:,.0f} MB.",
        f"Errors: median absolute error (D in µm²/ms) against the truth in {where} (voxels: {counts}). "
        f"Making the data took {simulate_s:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def benchmark(args: argparse.Namespace) -> tuple[str, dict]:
    """Make the data and run every method in ``args.workdir``; returns the report and the JSON record."""
    settings = configuration(args)
    (args.workdir / "config.json").write_text(json.dumps(settings))
    with measure() as making:
        making_peak = run_child("simulate", args.workdir)  # in a child, so that this process stays small
    data = json.loads((args.workdir / "data.json").read_text())
    print(f"data: {data['n_voxels']:,} voxels in {making.seconds:.0f} s", file=sys.stderr)
    baseline = run_child("baseline", args.workdir)
    rows = []
    for name in [*args.methods, *(["dipy"] if args.dipy else [])]:
        row = run_child(name, args.workdir)
        print(f"{row['method']}: {row['total_s']:.1f} s, peak {row['peak_rss_mb']:.0f} MB", file=sys.stderr)
        rows.append(row)
    groups = add_errors(rows, data)
    add_rates(rows, data)
    report = markdown(rows, groups, data, settings, baseline, making.seconds)
    record = {"configuration": settings, "data": data, "data_seconds": making.seconds,
              "data_peak_rss_mb": making_peak["peak_rss_mb"], "baseline": baseline, "error_voxels": groups,
              "memory_bound_mb": memory_bound_mb(data), "rows": rows}
    return report, record


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden ``--child``, one of its child processes)."""
    args = parse_args(argv)
    if args.child is not None:
        run_as_child(args.child, args.workdir)
        return 0
    given = args.workdir
    with tempfile.TemporaryDirectory(prefix="varmap-bench-") if given is None else nullcontext(given) as workdir:
        args.workdir = Path(workdir).resolve()
        args.workdir.mkdir(parents=True, exist_ok=True)
        report, record = benchmark(args)
    emit_table(report, args.output)
    if args.output is not None:
        from varmap.io import save_json

        save_json(record, output_paths(args.output)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
