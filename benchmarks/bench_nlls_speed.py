"""Speed and accuracy of varmap's batched NLLS against dipy's MS-DKI fit on simulated HCP-like data.

Simulates MS-DKI signals with the paper's three tissue clusters on an HCP-like protocol (18 b=0 plus
90 directions at b = 1000, 2000, 3000 s/mm²) with Rician noise (:func:`varmap.simulation.simulate`),
fits them with ``varmap``'s ``nlls`` estimator and with dipy's ``MeanDiffusionKurtosisModel``
(:func:`varmap.evaluation.baselines.fit_dipy_msdki`: weighted least squares on log signals) in the
same process, and prints a Markdown table of run time and error.

Example::

    python benchmarks/bench_nlls_speed.py --n-voxels 10000 --snr 20 --output nlls_speed.md
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import varmap
from varmap.devices import resolve_device
from varmap.estimators import get_estimator
from varmap.evaluation import error_table
from varmap.evaluation.baselines import fit_dipy_msdki
from varmap.evaluation.runner import emit_table, machine_summary, markdown_table, measure
from varmap.signal_models import get_signal_model
from varmap.simulation import SimulatedData, hcp_protocol, msdki_paper_prior, simulate

Fit = Callable[[np.ndarray], dict[str, np.ndarray]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-voxels", type=int, default=10_000, help="simulated voxels (default 10000)")
    parser.add_argument("--snr", type=float, default=20.0, help="b=0 signal over noise sigma (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of parameters, noise and protocol")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the median is shown")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="torch device of varmap (default: CUDA if available)")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    args = parser.parse_args(argv)
    if args.n_voxels < 1 or args.snr <= 0 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--n-voxels, --repeats and --threads must be >= 1 and --snr > 0.")
    if args.output is not None and args.output.exists() and not args.force:
        parser.error(f"{args.output} exists; pass --force to overwrite it.")
    return args


def simulate_msdki(n_voxels: int, snr: float, seed: int) -> SimulatedData:
    """MS-DKI voxels of the paper's prior on the HCP-like protocol, S0 = 1, Rician noise."""
    model = get_signal_model("msdki", hcp_protocol(seed=seed))
    return simulate(model, msdki_paper_prior(), n_voxels=n_voxels, snr=snr, seed=seed)


def fits(data: SimulatedData, device: str | None) -> dict[str, Fit]:
    """The compared fits by table name: varmap's nlls and dipy's MS-DKI, each signals -> {"D", "K"}."""
    model = get_signal_model("msdki", data.protocol)
    return {
        f"varmap nlls ({resolve_device(device)})": lambda s: get_estimator("nlls", model, device=device).fit(s).params,
        "dipy MSDKI (WLS)": lambda s: fit_dipy_msdki(s, data.protocol),
    }


def time_method(fit: Fit, signals: np.ndarray, repeats: int) -> tuple[float, dict[str, np.ndarray]]:
    """Median wall time of ``repeats`` runs after one small warm-up run, and the last estimates."""
    fit(signals[: min(100, len(signals))])
    seconds = []
    for _ in range(repeats):
        with measure() as cost:
            estimates = fit(signals)
        seconds.append(cost.seconds)
    return statistics.median(seconds), estimates


def report(data: SimulatedData, runs: dict[str, tuple[float, dict]], args: argparse.Namespace) -> str:
    """Markdown: time and error of each method, RMSE per cluster, and how the numbers were taken."""
    names = data.prior.cluster_names
    errors = {name: _errors(estimates, data) for name, (_, estimates) in runs.items()}
    reference = runs["dipy MSDKI (WLS)"][0]
    speed = [
        [name, f"{seconds:.3f}", f"{data.n_voxels / seconds:,.0f}", f"{seconds / reference:.2f}×",
         f"{errors[name]['D', 'all']:.4f}", f"{errors[name]['K', 'all']:.4f}", f"{int(np.isnan(estimates['D']).sum())}"]
        for name, (seconds, estimates) in runs.items()
    ]
    nan = float("nan")
    clusters = [
        [name, *(f"{errors[name].get(('D', c), nan):.3f} / {errors[name].get(('K', c), nan):.3f}" for c in names)]
        for name in runs
    ]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = [
        f"MS-DKI fits of {data.n_voxels} simulated voxels, SNR {args.snr:g}, Rician noise, seed {args.seed}",
        "",
        *markdown_table(["method", "seconds", "voxels/s", "time vs dipy", "RMSE D (µm²/ms)", "RMSE K", "NaN voxels"],
                        speed),
        "",
        "RMSE per cluster (D / K):",
        "",
        *markdown_table(["method", *names], clusters),
        "",
        f"- machine: {machine_summary()}; load average {load}; varmap {varmap.__version__}",
        f"- data: varmap.simulation (hcp_protocol, msdki_paper_prior); protocol {data.protocol!r}; "
        f"{data.n_voxels} voxels, S0 = 1, sigma = 1/{args.snr:g}",
        f"- timing: median of {args.repeats} runs after a 100-voxel warm-up, same process, same data; "
        "varmap time includes S0 normalisation, noise estimation and initialisation",
    ]
    return "\n".join(lines)


def _errors(estimates: dict[str, np.ndarray], data: SimulatedData) -> dict[tuple[str, str], float]:
    """RMSE of D and K over all voxels and per cluster present, keyed by (parameter, cluster)."""
    truth = {name: data.params[name] for name in ("D", "K")}
    rows = error_table(estimates, truth, data.labels, data.prior.cluster_names)
    return {(row["parameter"], row["cluster"]): row["rmse"] for row in rows}


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = simulate_msdki(args.n_voxels, args.snr, args.seed)
    runs = {name: time_method(fit, data.signals, args.repeats) for name, fit in fits(data, args.device).items()}
    table = report(data, runs, args)
    emit_table(table, args.output)
    return table


if __name__ == "__main__":
    main()
