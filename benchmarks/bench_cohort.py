"""A phantom cohort mapped by ``varmap bids``: serial vs Dask workers, per-subject fits vs one population model.

Writes an N-subject phantom cohort (:func:`varmap.phantom.cohort.write_phantom_cohort`: own seed, field
of view and noise level per subject), then times

1. the participant level, one fit per subject, with 1 Dask worker (serial) and with ``--workers``;
2. the group level (one population model trained on voxels of every subject, ``--nproc`` processes)
   plus the participant level mapping every subject with it (no training);

and prints, per tissue (voxels whose dominant tissue is WM, GM or CSF, pooled over subjects), the RMSE
of every parameter against the ground truth for both ways of mapping.

Example::

    python benchmarks/bench_cohort.py                                  # 8 subjects at 2 mm
    python benchmarks/bench_cohort.py --subjects 3 --crop 20 20 10 --n-epochs 5 --output cohort.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from varmap.cohort.app import run_group_level, run_participant_level
from varmap.cohort.naming import MODEL_LABELS, PARAM_LABELS
from varmap.evaluation.runner import emit_table, machine_summary, markdown_table
from varmap.phantom import TISSUES, TISSUE_PARAMETERS
from varmap.phantom.cohort import TRUTH_FOLDER, write_phantom_cohort


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=8, help="phantom subjects (default 8)")
    parser.add_argument("--voxel-size", type=float, default=2.0, help="mm (default 2)")
    parser.add_argument("--crop", type=int, nargs=3, default=None, metavar=("NX", "NY", "NZ"),
                        help="keep a centred box of this many voxels per subject (quick runs)")
    parser.add_argument("--model", default="msdki", choices=sorted(TISSUE_PARAMETERS), help="signal model")
    parser.add_argument("--method", default="gmvae", choices=["gmvae", "vae", "selfsup"],
                        help="estimator of the per-subject fits and of the population model (default gmvae)")
    parser.add_argument("--n-epochs", type=int, default=None, help="training epochs (default: the estimator's)")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers of the parallel run (default 2)")
    parser.add_argument("--nproc", type=int, default=1, help="torch.distributed processes of the group level")
    parser.add_argument("--snr", type=float, default=10.0, help="b=0 SNR of white matter (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cohort and the fits (default 0)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the data (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown tables here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    args = parser.parse_args(argv)
    if args.output is not None and args.output.exists() and not args.force:
        parser.error(f"{args.output} exists; pass --force to overwrite it.")
    if args.subjects < 1 or args.workers < 1 or args.nproc < 1:
        parser.error("--subjects, --workers and --nproc must be >= 1.")
    return args


def _timed(function, *args, **kwargs) -> tuple[object, float]:
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - started


def _participant(bids_dir: Path, output_dir: Path, args: argparse.Namespace, **kwargs) -> float:
    report, seconds = _timed(run_participant_level, bids_dir, output_dir, seed=args.seed, device="cpu",
                             figure=False, **kwargs)
    if report.failed:
        raise RuntimeError(f"participant level failed for {report.summary()}")
    return seconds


def tissue_rmse(bids_dir: Path, derivatives: Path, model: str, subjects: list[str]) -> dict[tuple[str, str], float]:
    """RMSE of every parameter against the truth, per dominant tissue, pooled over ``subjects``."""
    import nibabel as nib

    errors: dict[tuple[str, str], list[np.ndarray]] = {}
    truth_root = bids_dir / TRUTH_FOLDER
    for label in subjects:
        stem = f"sub-{label}"
        tissue = np.asarray(nib.load(truth_root / stem / "dwi" / f"{stem}_dseg.nii.gz").dataobj)
        for name, param in PARAM_LABELS[model].items():
            if name in ("S0", "n"):
                continue
            file = f"{stem}_model-{MODEL_LABELS[model]}_param-{param}_dwimap.nii.gz"
            truth = np.asarray(nib.load(truth_root / stem / "dwi" / file).dataobj, dtype=np.float64)
            estimate = np.asarray(nib.load(derivatives / stem / "dwi" / file).dataobj, dtype=np.float64)
            for index, tissue_name in enumerate(TISSUES, start=1):
                where = tissue == index
                errors.setdefault((tissue_name, name), []).append((estimate - truth)[where])
    return {key: float(np.sqrt(np.mean(np.concatenate(parts) ** 2))) if sum(p.size for p in parts) else np.nan
            for key, parts in errors.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = {} if args.n_epochs is None else {"n_epochs": args.n_epochs}
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        work = Path(work)
        bids_dir = work / "bids"
        _, write_s = _timed(write_phantom_cohort, bids_dir, n_subjects=args.subjects, model=args.model,
                            voxel_size=args.voxel_size, snr=args.snr, seed=args.seed, crop=args.crop)
        subjects = [f"{i + 1:02d}" for i in range(args.subjects)]
        fit = {"model": args.model, "method": args.method, **options}
        serial_s = _participant(bids_dir, work / "serial", args, workers=1, **fit)
        parallel_s = _participant(bids_dir, work / "parallel", args, workers=args.workers, **fit)
        checkpoint, group_s = _timed(run_group_level, bids_dir, work / "population", model=args.model,
                                     method=args.method, n_proc=args.nproc, seed=args.seed, device="cpu", **options)
        apply_s = _participant(bids_dir, work / "population", args, workers=args.workers, population_model=checkpoint)
        per_subject = tissue_rmse(bids_dir, work / "parallel", args.model, subjects)
        population = tissue_rmse(bids_dir, work / "population", args.model, subjects)

    size = f"{args.voxel_size:g} mm" + (f", crop {' x '.join(map(str, args.crop))}" if args.crop else "")
    timing = [
        (f"per-subject {args.method} fits, 1 worker (serial)", serial_s),
        (f"per-subject {args.method} fits, {args.workers} workers", parallel_s),
        (f"population model: group level ({args.nproc} process(es))", group_s),
        (f"population model: participant level, {args.workers} workers", apply_s),
        ("population model: total", group_s + apply_s),
    ]
    accuracy = [
        [tissue, name, f"{per_subject[tissue, name]:.4f}", f"{population[tissue, name]:.4f}"]
        for tissue, name in per_subject
    ]
    lines = [
        f"# Phantom cohort: {args.subjects} subjects, {args.model}, {size}, SNR {args.snr:g} (seed {args.seed}; "
        f"cohort written in {write_s:.1f} s)",
        "",
        *markdown_table(["run", "wall time (s)"], [[run, f"{seconds:.1f}"] for run, seconds in timing]),
        "",
        "RMSE against the truth, voxels grouped by dominant tissue, pooled over subjects:",
        "",
        *markdown_table(["tissue", "parameter", "per-subject fits", "population model"], accuracy),
        "",
        machine_summary(),
    ]
    emit_table("\n".join(lines), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
