"""Noise-map estimators of the image pipeline, measured on brains whose noise level varies in space.

A cropped brain phantom (:func:`varmap.phantom.make_phantom`, nearly noiseless) gets Rician noise whose
standard deviation follows a smooth field that varies by a factor 3 over the image (like a coil
sensitivity or g-factor profile): ``sigma(x) = sigma_min · (1 + 2 u(x))`` with ``u`` a smooth random
field (FWHM ``--field-fwhm`` mm) rescaled to [0, 1] over the grid.  Every estimator of
:data:`varmap.pipeline.noise_maps.NOISE_MAP_METHODS` (and variants of its parameters) maps σ, for a
protocol with several b=0 volumes and for one with a single b=0; the table gives, inside the brain
mask, the median relative error ``|σ̂ − σ| / σ``, its 95th percentile, and the median ratio σ̂/σ (the
bias), each as the mean over ``--seeds`` noise draws.  ``default`` marks the method
:func:`~varmap.pipeline.noise_maps.default_method` picks for the protocol.  ``--protocols`` adds short
protocols (a clinical trace scan, 1 b=0 + 2 x 6 directions) to the default two, and ``--model ball_stick``
gives the phantom anisotropic white matter, which residual fits without a full tensor read as noise.

Examples::

    python benchmarks/bench_noise_map.py --output noise_map.md
    python benchmarks/bench_noise_map.py --model ball_stick --protocols one_b0 two_by_six trace
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from varmap.evaluation.runner import emit_table, machine_summary, markdown_table
from varmap.io import DWIImage
from varmap.phantom import make_phantom
from varmap.phantom.fields import smooth_random_field
from varmap.pipeline.noise_maps import NOISE_MAP_METHODS, default_method, estimate_noise_map
from varmap.protocol import Protocol
from varmap.random_streams import numpy_stream
from varmap.simulation import add_noise, hcp_protocol, trace_protocol

#: (method, parameters) measured; parameters update the method's defaults.
CANDIDATES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("b0_local_pooling", {"radius": 1}),
    ("b0_local_pooling", {"radius": 2}),
    ("b0_local_pooling", {"radius": 3}),
    ("pca_local", {}),
    ("pca_local", {"smooth": 0}),
    ("pseudo_residual_local", {"radius": 1}),
    ("pseudo_residual_local", {"radius": 2}),
    ("pseudo_residual_local", {"radius": 3}),
    ("fit_residual_local", {"radius": 0}),
    ("fit_residual_local", {"radius": 1}),
    ("fit_residual_local", {"radius": 2}),
    ("global_constant", {}),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxel-size", type=float, default=4.0, help="phantom voxel size in mm (default 4)")
    parser.add_argument("--crop", type=int, nargs=3, default=[24, 28, 18], metavar=("NX", "NY", "NZ"),
                        help="centred box of the phantom, voxels (default 24 28 18)")
    parser.add_argument("--snr", type=float, default=20.0,
                        help="b=0 SNR of white matter where the noise is lowest (default 20; 20/3 where highest)")
    parser.add_argument("--n-b0", type=int, default=6, help="b=0 volumes of the multi-b0 protocol (default 6)")
    parser.add_argument("--protocols", nargs="+", choices=("multi_b0", "one_b0", "two_by_six", "trace"),
                        default=["multi_b0", "one_b0"],
                        help="protocols measured: multi_b0 (--n-b0 b=0 + 2 x 30 directions at b = 1000, 2000 "
                        "s/mm²), one_b0 (1 b=0 + the same), two_by_six (1 b=0 + 2 x 6 directions), trace (1 b=0 + "
                        "the three axes at b = 1000, 2000); default multi_b0 one_b0")
    parser.add_argument("--model", choices=("msdki", "ball_stick"), default="msdki",
                        help="signal model of the phantom's tissues (default msdki)")
    parser.add_argument("--field-fwhm", type=float, default=60.0, help="FWHM of the noise field in mm (default 60)")
    parser.add_argument("--seeds", type=int, default=2, help="noise draws per protocol (default 2)")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    args = parser.parse_args(argv)
    if args.output is not None and args.output.exists() and not args.force:
        parser.error(f"{args.output} exists; pass --force to overwrite it.")
    if args.n_b0 < 2 or args.seeds < 1 or args.snr <= 0:
        parser.error("--n-b0 must be >= 2, --seeds >= 1 and --snr > 0.")
    return args


def named_protocol(name: str, n_b0: int) -> Protocol:
    """The protocol ``name`` of ``--protocols`` (``n_b0``: that of multi_b0)."""
    if name == "trace":
        return trace_protocol()
    if name == "two_by_six":
        return hcp_protocol(n_b0=1, n_directions=6, shells=(1000.0, 2000.0))
    return hcp_protocol(n_b0=n_b0 if name == "multi_b0" else 1, n_directions=30, shells=(1000.0, 2000.0))


def simulated_scan(protocol: Protocol, args: argparse.Namespace, seed: int) -> tuple[DWIImage, np.ndarray, np.ndarray]:
    """A phantom crop with spatially varying Rician noise, as an in-memory image.

    Returns
    -------
    image : DWIImage
    mask : ndarray of bool, shape (X, Y, Z)
    sigma : ndarray, shape (X, Y, Z)
        The true noise standard deviation of every voxel, raw units.
    """
    clean = make_phantom(model=args.model, voxel_size=args.voxel_size, crop=tuple(args.crop), snr=1e6, seed=0,
                         protocol=protocol)
    field = smooth_random_field(clean.mask.shape, fwhm_voxels=args.field_fwhm / args.voxel_size,
                                rng=numpy_stream(seed, "noise field"))
    unit = (field - field.min()) / (field.max() - field.min())
    sigma = (clean.sigma * 1e6 / args.snr) * (1.0 + 2.0 * unit.astype(np.float64))
    noisy = add_noise(clean.dwi, sigma=sigma[..., None], rng=numpy_stream(seed, "noise")).astype(np.float32)
    return DWIImage.in_memory(noisy, clean.affine, f"simulated (seed {seed})"), clean.mask, sigma


def measure(args: argparse.Namespace) -> list[list[str]]:
    """One table row per protocol and candidate: errors averaged over the seeds, and seconds."""
    rows = []
    for name in args.protocols:
        protocol = named_protocol(name, args.n_b0)
        scores: dict[tuple[str, str], list[np.ndarray]] = {}
        for seed in range(args.seeds):
            image, mask, sigma = simulated_scan(protocol, args, seed)
            for method, parameters in CANDIDATES:
                if protocol.n_b0 < NOISE_MAP_METHODS[method].min_b0:
                    continue
                start = time.perf_counter()
                estimate = estimate_noise_map(image, protocol, mask, method, parameters)
                seconds = time.perf_counter() - start
                ratio = estimate[mask] / sigma[mask]
                error = np.abs(ratio - 1.0)
                label = ", ".join(f"{k}={v}" for k, v in {**NOISE_MAP_METHODS[method].parameters, **parameters}.items())
                scores.setdefault((method, label), []).append(
                    np.array([np.median(error), np.percentile(error, 95), np.median(ratio), seconds]))
        for (method, label), values in scores.items():
            median_error, p95_error, bias, seconds = np.mean(values, axis=0)
            chosen = "default" if method == default_method(protocol) and _is_default(method, label) else ""
            rows.append([f"{name} ({protocol.n_b0} b=0, {protocol.n_measurements})", method, label or "-",
                         f"{median_error:.3f}", f"{p95_error:.3f}", f"{bias:.3f}", f"{seconds:.2f}", chosen])
    return rows


def _is_default(method: str, label: str) -> bool:
    return label == ", ".join(f"{k}={v}" for k, v in NOISE_MAP_METHODS[method].parameters.items())


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    rows = measure(args)
    lines = [
        f"Noise-map estimators on a {args.voxel_size:g} mm {args.model} brain-phantom crop {tuple(args.crop)} whose noise level "
        f"varies smoothly by a factor 3 (b=0 SNR of white matter {args.snr:g} to {args.snr / 3:.3g}), "
        f"{args.seeds} noise draw(s) per protocol",
        "",
        *markdown_table(["protocol", "method", "parameters", "median |rel. error|", "95th pct |rel. error|",
                         "median ratio", "seconds", ""], rows),
        "",
        f"- protocols (name (b=0 volumes, measurements)): multi_b0 and one_b0 hcp_protocol(n_b0, 30 directions, b = "
        f"1000, 2000 s/mm²) with n_b0 = {args.n_b0} and 1; two_by_six hcp_protocol(1, 6 directions, same b); "
        "trace: 1 b=0 + the three axes at b = 1000, 2000",
        f"- noise field: smooth_random_field, FWHM {args.field_fwhm:g} mm, rescaled to sigma_min x [1, 3]; Rician",
        f"- machine: {machine_summary()}",
    ]
    table = "\n".join(lines)
    emit_table(table, args.output)
    return table


if __name__ == "__main__":
    main()
