"""MS-DKI on a continuum of tissue: parameters uniform over a box, no clusters.

The study's priors are a few Gaussian clusters, the shape gmvae's prior has.  Real brains fill the space
between tissues (partial volume) and end at hard edges (free diffusion, D about 3 µm²/ms).  Here every
voxel's (D, K) is drawn uniformly from a box cut to the physically valid part (the signal decays up to the
protocol's largest b-value; :func:`varmap.evaluation.oracle.box.sample_box`), S0 = 1 and one noise level
σ = 1 / SNR, Rician.  Every method fits the same signals; the exact posterior under the true (uniform)
prior, :func:`varmap.evaluation.oracle.box.msdki_box_oracle`, is the Bayes-optimal yardstick.  The table gives
RMSE, its ratio to the oracle's, bias, and for methods that report a std the coverage of the ±1.96 std
interval and the RMS z-score, over all voxels and by the true D (the high-D end is where the signal meets
the noise floor and the prior decides most).

Example::

    python benchmarks/bench_continuum.py --snr 10 20 --output continuum.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from varmap.estimators import get_estimator
from varmap.evaluation import bias, rmse
from varmap.evaluation.oracle.box import msdki_box_oracle, sample_box
from varmap.evaluation.runner import emit_table, machine_summary, markdown_table
from varmap.random_streams import numpy_stream
from varmap.signal_models import get_signal_model
from varmap.simulation import add_noise, study_protocol

#: Ranges of the true D (µm²/ms) that the table reports apart from all voxels.
D_BANDS = ((0.0, 1.2), (1.2, 2.0), (2.0, 2.5), (2.5, np.inf))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="hcp", help="study protocol: hcp, abcd or clinical (default hcp)")
    parser.add_argument("--snr", type=float, nargs="+", default=[10.0, 20.0], help="b=0 SNRs (default 10 20)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    parser.add_argument("--n-voxels", type=int, default=10000, help="voxels per data set (default 10000)")
    parser.add_argument("--methods", nargs="+", default=["nlls", "gmvae"], help="estimators (default nlls gmvae)")
    parser.add_argument("--D-range", type=float, nargs=2, default=[0.4, 3.0], metavar=("LOW", "HIGH"),
                        help="the box's D, µm²/ms (default 0.4 3.0)")
    parser.add_argument("--K-range", type=float, nargs=2, default=[0.0, 1.6], metavar=("LOW", "HIGH"),
                        help="the box's K (default 0 1.6)")
    parser.add_argument("--sigma-known", action="store_true",
                        help="give the methods the true noise level (default: they estimate it, as varmap.fit does)")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    args = parser.parse_args(argv)
    if args.output is not None and args.output.exists() and not args.force:
        parser.error(f"{args.output} exists; pass --force to overwrite it.")
    if args.n_voxels < 1 or min(args.snr) <= 0:
        parser.error("--n-voxels must be >= 1 and every --snr > 0.")
    return args


def score(estimate: np.ndarray, std: np.ndarray | None, truth: np.ndarray, oracle_rmse: float) -> list[str]:
    """RMSE, its ratio to the oracle's, bias, coverage and RMS z of one parameter over some voxels."""
    error = rmse(estimate, truth)
    cells = [f"{error:.4f}", f"{error / oracle_rmse:.2f}", f"{bias(estimate, truth):+.4f}"]
    if std is None:
        return cells + ["", ""]
    z = (estimate - truth) / std
    return cells + [f"{np.mean(np.abs(z) < 1.96):.3f}", f"{np.sqrt(np.mean(z**2)):.2f}"]


def measure(args: argparse.Namespace) -> list[list[str]]:
    """Rows of the table: every SNR, seed, method (the oracle first), parameter and band of D."""
    protocol, _ = study_protocol(args.protocol)
    model = get_signal_model("msdki", protocol)
    b_max = float(protocol.bvals.max())
    rows = []
    for snr in args.snr:
        for seed in args.seeds:
            D, K = sample_box(args.n_voxels, tuple(args.D_range), tuple(args.K_range), b_max,
                            numpy_stream(seed, "continuum parameters"))
            clean = model.predict({"D": D, "K": K}, S0=np.ones(args.n_voxels))
            signals = add_noise(clean, sigma=1.0 / snr, rng=numpy_stream(seed, f"continuum noise at SNR {snr:g}"))
            truth = {"D": D, "K": K}
            fits = {}
            start = time.perf_counter()
            oracle = msdki_box_oracle(signals, protocol, D_range=tuple(args.D_range), K_range=tuple(args.K_range),
                                      sigma=1.0 / snr, S0=1.0)
            fits["Bayes (true prior)"] = (oracle.params, oracle.std, time.perf_counter() - start)
            for method in args.methods:
                start = time.perf_counter()
                options = {"sigma": 1.0 / snr} if args.sigma_known else {}
                fit = get_estimator(method, model, seed=seed, **options).fit(signals)
                fits[method] = (fit.params, fit.std, time.perf_counter() - start)
            bands = [("all", np.ones(args.n_voxels, dtype=bool))] + [
                (f"D {low:g}-{high:g}" if np.isfinite(high) else f"D >= {low:g}", (D >= low) & (D < high))
                for low, high in D_BANDS
            ]
            for method, (params, std, seconds) in fits.items():
                for name in ("D", "K"):
                    for band, voxels in bands:
                        if not voxels.any():
                            continue
                        oracle_rmse = rmse(oracle.params[name][voxels], truth[name][voxels])
                        spread = None if std is None or name not in std else std[name][voxels]
                        rows.append([f"{snr:g}", str(seed), method, name, band, str(int(voxels.sum())),
                                     *score(params[name][voxels], spread, truth[name][voxels], oracle_rmse),
                                     f"{seconds:.1f}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = measure(args)
    header = ["SNR", "seed", "method", "parameter", "voxels (true D)", "n", "RMSE", "/ Bayes", "bias",
              "coverage ±1.96 std", "RMS z", "fit s"]
    lines = [
        f"# MS-DKI on a continuum: (D, K) uniform on D {args.D_range[0]:g}-{args.D_range[1]:g} µm²/ms, "
        f"K {args.K_range[0]:g}-{args.K_range[1]:g}, D·K·b_max < 3",
        "",
        f"Protocol `{args.protocol}`, {args.n_voxels} voxels per data set, S0 = 1, σ = 1/SNR (Rician); the methods "
        f"{'are given σ' if args.sigma_known else 'estimate σ'}. "
        "Bayes (true prior): the exact posterior under the uniform prior, S0 and σ known.",
        "",
        *markdown_table(header, rows),
        "",
        f"Machine: {machine_summary()}",
    ]
    emit_table("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
