"""Whole-image fitting: time and peak memory of ``varmap.fit_image`` by method, against dipy's MS-DKI.

Simulates an MS-DKI volume with known maps on an HCP-like protocol (18 b=0 plus 90 directions at
b = 1000, 2000, 3000 s/mm², 288 volumes), stored as scaled int16 NIfTI like HCP data, in an ellipsoidal
"brain" of at least 200,000 voxels; the signals come from :func:`varmap.signal_models.msdki_signal`
and the noise from :func:`varmap.simulation.add_noise`.  Each method then maps the whole image -- read, fit, goodness of
fit, write maps, checkpoint and figure -- in its own subprocess, so that every peak resident memory
(``VmHWM``) is that method's alone.  dipy's ``MeanDiffusionKurtosisModel`` fits the same data the
way its examples do (``img.get_fdata()``, then ``fit(data, mask=mask)``, then the two maps saved).

Example::

    python benchmarks/bench_image_fit.py --shape 110 110 40 --n-epochs 10 --output image_fit.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from varmap.evaluation.runner import (
    Stages,
    emit_table,
    machine_summary,
    markdown_table,
    measure,
    process_peak_rss_mb,
)
from varmap.simulation import add_noise, fibonacci_sphere

METHODS = ("nlls", "selfsup", "vae", "gmvae")
HCP_SHELLS = (1000.0, 2000.0, 3000.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[110, 110, 40], metavar=("X", "Y", "Z"),
                        help="image grid; the brain is the inscribed ellipsoid (default 110 110 40: 253k voxels)")
    parser.add_argument("--radius", type=float, default=0.99,
                        help="half-axes of the brain ellipsoid as a fraction of the grid's (default 0.99)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="varmap methods")
    parser.add_argument("--no-dipy", dest="dipy", action="store_false", help="skip dipy's MS-DKI fit")
    parser.add_argument("--n-epochs", type=int, default=10, help="training epochs of network methods (default 10)")
    parser.add_argument("--snr", type=float, default=20.0, help="b=0 SNR of white matter (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of maps and noise (default 0)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="varmap device")
    parser.add_argument("--compress", action="store_true", help="store the DWI as .nii.gz (default .nii)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the data (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None and args.output is not None and args.output.exists() and not args.force:
        parser.error(f"{args.output} exists; pass --force to overwrite it.")
    if min(args.shape) < 4 or args.n_epochs < 1 or args.snr <= 0 or not 0 < args.radius <= 1:
        parser.error("--shape needs at least 4 voxels per axis, --n-epochs >= 1, --snr > 0, 0 < --radius <= 1.")
    return args


# ---------------------------------------------------------------------------------------------- data


def simulate_image(
    folder: Path, shape: tuple[int, int, int], *, snr: float, seed: int, compress: bool, radius: float = 0.99
) -> dict:
    """Write dwi, bvals, bvecs, mask and the true maps; returns their paths and the voxel count.

    Tissue: a smooth white/grey-matter pattern (D 0.7-1.2 µm²/ms, K 0.5-1.0, inside the kurtosis
    expansion's valid range at b = 3000 s/mm²) with a CSF core (D = 3, K = 0); S0 = 1000 in tissue,
    2000 in CSF; Rician noise of σ = 1000 / snr.  The image is int16 with a scale factor, written one
    volume at a time into a memory-mapped ``.nii`` so that even an HCP-size image is simulated in little
    memory (``--compress`` builds it in memory and writes ``.nii.gz``).
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
    affine = np.diag([1.25, 1.25, 1.25, 1.0])
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
    return {"paths": {k: str(v) for k, v in paths.items()}, "n_voxels": int(brain.sum()), "shape": list(shape)}


# ---------------------------------------------------------------------------------------------- children
def errors(D: np.ndarray, K: np.ndarray, truth_path: str) -> dict:
    truth = np.load(truth_path)
    mask = truth["mask"] & ~(truth["D"] > 2.5)  # tissue only: CSF's K is not identifiable at this SNR
    return {"D_error": float(np.median(np.abs(D[mask] - truth["D"][mask]))),
            "K_error": float(np.median(np.abs(K[mask] - truth["K"][mask])))}


def child_varmap(method: str, args: argparse.Namespace, data: dict) -> dict:
    import varmap

    paths = data["paths"]
    options = {} if method == "nlls" else {"n_epochs": args.n_epochs}
    with measure() as wall:
        result = varmap.fit_image(
            paths["dwi"], paths["bvals"], paths["bvecs"], mask=paths["mask"], model="msdki", method=method,
            output_dir=Path(args.workdir) / f"out_{method}", force=True, seed=args.seed, device=args.device,
            progress=False, **options,
        )
    timings = result.metadata["timings"]
    return {"method": f"varmap {method}", "wall_s": wall.seconds, "fit_s": timings["fit_s"],
            "read_s": timings["read_s"], "write_s": timings.get("write_s", 0.0) + timings.get("figure_s", 0.0),
            "n_voxels": result.n_voxels, "device": result.metadata["config"]["device"],
            **errors(result.maps["D"], result.maps["K"], paths["truth"])}


def child_dipy(args: argparse.Namespace, data: dict) -> dict:
    import nibabel as nib
    from dipy.core.gradients import gradient_table
    from dipy.reconst.msdki import MeanDiffusionKurtosisModel

    paths = data["paths"]
    stages = Stages()
    with measure() as wall:
        with stages("read"):
            image = nib.load(paths["dwi"])
            dwi = image.get_fdata()  # as dipy's examples do: the whole image as float64
            mask = np.asanyarray(nib.load(paths["mask"]).dataobj) > 0
            bvals, bvecs = np.loadtxt(paths["bvals"]), np.loadtxt(paths["bvecs"]).T
            gtab = gradient_table(bvals, bvecs=bvecs)
        with stages("fit"):
            fit = MeanDiffusionKurtosisModel(gtab).fit(dwi, mask=mask)
            D = np.asarray(fit.msd, dtype=np.float32) * 1000.0  # mm²/s -> µm²/ms
            K = np.asarray(fit.msk, dtype=np.float32)
        with stages("write"):
            out = Path(args.workdir) / "out_dipy"
            out.mkdir(exist_ok=True)
            for name, array in (("D", D), ("K", K)):
                nib.save(nib.Nifti1Image(array, image.affine), out / f"{name}.nii.gz")
    seconds = stages.seconds
    return {"method": "dipy MS-DKI (WLS)", "wall_s": wall.seconds, "fit_s": seconds["fit"], "read_s": seconds["read"],
            "write_s": seconds["write"], "n_voxels": int(mask.sum()), "device": "cpu",
            **errors(np.nan_to_num(D), np.nan_to_num(K), paths["truth"])}


def child_baseline() -> dict:
    """Python with varmap, torch, nibabel, dipy and matplotlib imported: the floor of every row."""
    import dipy.reconst.msdki  # noqa: F401
    import matplotlib  # noqa: F401
    import nibabel  # noqa: F401
    import torch  # noqa: F401

    import varmap
    from varmap.provenance import environment

    return {"method": "imports only", "wall_s": 0.0, "fit_s": 0.0, "read_s": 0.0, "write_s": 0.0, "n_voxels": 0,
            "device": "-", "D_error": float("nan"), "K_error": float("nan"), "environment": environment(),
            "varmap": varmap.__version__}


def run_child(name: str, args: argparse.Namespace, data_file: Path) -> dict:
    command = [sys.executable, __file__, "--child", name, "--workdir", str(args.workdir), "--seed", str(args.seed),
               "--n-epochs", str(args.n_epochs), "--device", args.device, "--snr", str(args.snr), "--radius",
               str(args.radius), "--shape", *map(str, args.shape), *(["--compress"] if args.compress else [])]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "VARMAP_BENCH_DATA": str(data_file)})
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report
def markdown(rows: list[dict], data: dict, args: argparse.Namespace, simulate_s: float) -> str:
    header = ["method", "device", "voxels", "total (s)", "read (s)", "fit (s)", "write+figure (s)", "peak RSS (MB)",
              "median abs error D (µm²/ms)", "median abs error K"]
    table = [
        [row["method"], row["device"], f"{row['n_voxels']:,}", f"{row['wall_s']:.1f}", f"{row['read_s']:.1f}",
         f"{row['fit_s']:.1f}", f"{row['write_s']:.1f}", f"{row['peak_rss_mb']:.0f}", f"{row['D_error']:.3f}",
         f"{row['K_error']:.3f}"]
        for row in rows
    ]
    baseline = next((r for r in rows if "environment" in r), None)
    machine = machine_summary(baseline["environment"] if baseline else None)
    varmap_version = f"; varmap {baseline['varmap']}" if baseline else ""
    lines = [
        f"Whole-image MS-DKI mapping of a simulated {'x'.join(map(str, data['shape']))}x288 volume "
        f"({data['n_voxels']:,} brain voxels, int16 {'.nii.gz' if args.compress else '.nii'}, SNR {args.snr:g}); "
        f"network methods {args.n_epochs} epochs; each row in its own process.",
        "",
        *markdown_table(header, table),
    ]
    full_float64 = int(np.prod(data["shape"])) * 288 * 8 / 2**20
    masked_float32 = data["n_voxels"] * 288 * 4 / 2**20
    lines += [
        "",
        f"For scale: the whole image as float64 is {full_float64:,.0f} MB; the masked voxels as float32 "
        f"{masked_float32:,.0f} MB. Simulation took {simulate_s:.0f} s.",
        f"Machine: {machine}{varmap_version}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        if args.child == "simulate":
            data = simulate_image(args.workdir, tuple(args.shape), snr=args.snr, seed=args.seed,
                                compress=args.compress, radius=args.radius)
            Path(os.environ["VARMAP_BENCH_DATA"]).write_text(json.dumps(data))
            print(json.dumps({"peak_rss_mb": process_peak_rss_mb()}))
            return 0
        data = json.loads(Path(os.environ["VARMAP_BENCH_DATA"]).read_text())
        if args.child == "dipy":
            row = child_dipy(args, data)
        elif args.child == "baseline":
            row = child_baseline()
        else:
            row = child_varmap(args.child, args, data)
        row["peak_rss_mb"] = process_peak_rss_mb()
        print(json.dumps(row))
        return 0

    temporary = None
    if args.workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix="varmap-bench-")
        args.workdir = Path(temporary.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        data_file = args.workdir / "data.json"
        with measure() as simulation:
            run_child("simulate", args, data_file)  # in a child, so that this process stays small
        data = json.loads(data_file.read_text())
        simulate_s = simulation.seconds
        print(f"simulated {data['n_voxels']:,} voxels in {simulate_s:.0f} s", file=sys.stderr)
        rows = []
        for name in ["baseline", *args.methods, *(["dipy"] if args.dipy else [])]:
            row = run_child(name, args, data_file)
            print(f"{row['method']}: {row['wall_s']:.1f} s, peak {row['peak_rss_mb']:.0f} MB", file=sys.stderr)
            rows.append(row)
        emit_table(markdown(rows, data, args, simulate_s), args.output)
    finally:
        if temporary is not None:
            temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
