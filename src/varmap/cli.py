"""The ``varmap`` command: a thin layer over :mod:`varmap.pipeline` and :mod:`varmap.evaluation`.

Subcommands
-----------
``varmap fit DWI --bvals F --bvecs F [--mask M] --model M --method M -o OUTDIR``
    Fit a model to every voxel and write maps, uncertainty, clusters, ``fit.json``, ``model.pt`` and
    ``overview.png``.
``varmap apply CHECKPOINT DWI --bvals F --bvecs F [--mask M] -o OUTDIR``
    Map a new scan of the same protocol with a trained ``model.pt``, without training.
``varmap bench MODEL``
    Simulation study: every method against the truth and the Bayes oracle (MODEL msdki or
    ball_stick), or ``varmap bench phantom``: every method on the brain phantom, per tissue.
``varmap phantom -o DIR`` or ``varmap phantom --bids DIR --subjects N``
    Write a digital brain phantom (DWI, bvals/bvecs, mask, ground truth), or a BIDS dataset of N
    phantom subjects with their ground truth as derivatives.
``varmap bids BIDS_DIR OUTPUT_DIR participant|group``
    A BIDS App: every subject/session mapped on Dask into BIDS-Derivatives (``participant``), or one
    population model trained on all of them (``group``).  The exit status of ``participant`` is the
    number of scans that failed (at most 100).
``varmap demo``
    A small simulation study with its figures.

User errors (missing or inconsistent files, an existing output folder...) print one line
``varmap: error: <what is wrong and how to fix it>`` and exit with status 2; ``--debug`` shows the
traceback.  The method flags of ``varmap fit`` are read from the estimators' option tables
(:data:`varmap.estimators.options.OPTIONS`).  Heavy libraries (torch, nibabel, dipy) are imported
inside the commands.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .devices import DEVICES
from .estimators.options import OPTIONS, Option
from .provenance import command_line

__all__ = ["main", "build_parser", "method_flags", "USER_ERRORS"]

logger = logging.getLogger("varmap")

#: Exception types reported as one-line user errors (exit status 2).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                                                IsADirectoryError, PermissionError)



def method_flags() -> dict[str, tuple[Option, tuple[str, ...]]]:
    """The options offered as flags of ``varmap fit`` (``cli=True``, union over the methods).

    Returns
    -------
    dict
        Option name -> (its declaration, the methods that have it).  The declaration is the first
        method's; where the methods disagree on its type, choices or number of values, a
        ``ValueError`` says so (one flag cannot serve both).
    """
    flags: dict[str, tuple[Option, tuple[str, ...]]] = {}
    for method, options in OPTIONS.items():
        for option in options:
            if not option.cli:
                continue
            if option.name not in flags:
                flags[option.name] = (option, (method,))
                continue
            first, methods = flags[option.name]
            if (first.type, first.choices, first.n_values) != (option.type, option.choices, option.n_values):
                raise ValueError(f"option {option.name} is declared differently by {methods[0]} and {method}; "
                                 f"one command-line flag cannot serve both.")
            flags[option.name] = (first, (*methods, method))
    return flags


def _add_method_option(group: argparse._ArgumentGroup, option: Option, methods: Sequence[str]) -> None:
    """``option``'s flag; absent from the parsed arguments unless given, so estimator defaults rule."""
    text = option.help.replace("%", "%%")
    if len(methods) < len(OPTIONS):
        text += f" [{', '.join(methods)}]"
    kwargs: dict[str, Any] = {"dest": option.name, "default": argparse.SUPPRESS, "help": text}
    if option.type is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = option.type
        if option.choices is not None:
            kwargs["choices"] = list(option.choices)
        else:
            kwargs["metavar"] = {int: "N", float: "X"}.get(option.type, "VALUE")
        if option.n_values > 1:
            kwargs["nargs"] = option.n_values
    group.add_argument(option.flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``varmap`` and its subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars and no log messages but warnings")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of errors")

    parser = argparse.ArgumentParser(
        prog="varmap",
        description="Self-supervised variational parameter mapping for quantitative MRI.",
    )
    parser.add_argument("--version", action="version", version=f"varmap {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # ---- fit
    fit = commands.add_parser(
        "fit", parents=[common], help="fit a model to a 4-D diffusion image and write maps",
        description="Fit a signal model to every voxel of a 4-D NIfTI diffusion image; write parameter, "
        "uncertainty and cluster maps, fit.json, model.pt and overview.png to OUTDIR.",
    )
    fit.add_argument("dwi", metavar="DWI", help="4-D NIfTI image (.nii or .nii.gz)")
    _add_scan_arguments(fit)
    fit.add_argument("--model", required=True, choices=["msdki", "ball_stick"], help="signal model")
    fit.add_argument("--method", required=True, choices=list(OPTIONS), help="estimator")
    fit.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    options = fit.add_argument_group("method options (estimator defaults apply to those not given; "
                                     "[methods] that have them, where not all do)")
    for option, methods in method_flags().values():
        _add_method_option(options, option, methods)
    fit.set_defaults(handler=_cmd_fit)

    # ---- apply
    apply = commands.add_parser(
        "apply", parents=[common], help="map a new scan with a trained checkpoint (no training)",
        description="Map a new scan of the same protocol with the model.pt written by varmap fit.",
    )
    apply.add_argument("checkpoint", metavar="CHECKPOINT", help="model.pt written by varmap fit")
    apply.add_argument("dwi", metavar="DWI", help="4-D NIfTI image (.nii or .nii.gz)")
    _add_scan_arguments(apply)
    apply.add_argument("--sigma", type=float, default=None, metavar="X",
                       help="noise standard deviation of the new scan in raw signal units, one number (default: a "
                       "noise map estimated from the scan as the fit did)")
    apply.set_defaults(handler=_cmd_apply)

    # ---- bench
    bench = commands.add_parser(
        "bench", parents=[common], help="simulation study of every method against the truth and the oracle",
        description="Simulate voxels at several SNRs, fit them with every method, and compare the "
        "errors with the Bayes-optimal oracle.",
    )
    bench.add_argument("model", metavar="MODEL", choices=["msdki", "ball_stick", "phantom"],
                       help="signal model of the voxel study, or 'phantom' for the brain-phantom study")
    bench.add_argument("--snrs", type=float, nargs="+", default=[5.0, 10.0, 20.0, 50.0],
                       help="b=0 signal-to-noise ratios (default 5 10 20 50)")
    bench.add_argument("--n-voxels", type=int, default=10_000, help="voxels per SNR (default 10000)")
    bench.add_argument("--methods", nargs="+", default=["nlls", "selfsup", "vae", "gmvae"],
                       help="estimators (default nlls selfsup vae gmvae)")
    bench.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    bench.add_argument("--n-oracle", type=int, default=2000, help="voxels on which the oracle runs (default 2000)")
    bench.add_argument("--prior", default=argparse.SUPPRESS, help="simulation prior (default: the model's)")
    bench.add_argument("--protocol", default="hcp", choices=("hcp", "clinical", "abcd", "hcp_no_b0", "abcd_no_b0", "trace"),
                       help="voxel study: acquisition, hcp (18 b=0 + 3 shells x 90 directions; default), "
                       "clinical (1 b=0 + 2 shells x 30 directions), abcd (7 b=0 + 6, 15, 15, 60 directions "
                       "at b = 500, 1000, 2000, 3000); hcp_no_b0 and abcd_no_b0 are those without their b=0 volumes; "
                       "trace (1 b=0 + the three axes at b = 1000, 2000: 7 measurements)")
    bench.add_argument("-o", "--output", dest="output_dir", type=Path, default=None,
                       help="output folder (default bench_output/MODEL)")
    bench.add_argument("--force", action="store_true", help="replace an existing output folder")
    bench.add_argument("--noise-variation", type=float, default=1.0, metavar="R",
                       help="voxel study: noise level differing between voxels by a factor up to R "
                       "(log-uniform on [1, R]; default 1: one noise level); msdki's oracle then marginalises "
                       "each voxel's level unless --sigma-known, and one given it runs beside")
    bench.add_argument("--s0-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                       help="voxel study (msdki): S0 uniform on [LOW, HIGH] between voxels, which the oracle "
                       "marginalises (default: the same S0 everywhere)")
    bench.add_argument("--sigma-known", action="store_true",
                       help="voxel study: give every method each voxel's true noise level, as the oracle has it")
    _add_jobs_argument(bench, "voxel study: ")
    _add_phantom_arguments(bench, "phantom study: ")
    bench.add_argument("--n-epochs", type=int, default=None, help="phantom study: training epochs of the network methods")
    bench.add_argument("--no-dipy", action="store_true", help="phantom study: skip dipy's MS-DKI fit")
    bench.add_argument("--per-voxel-sigma", action="store_true",
                       help="phantom study: each method estimates the noise level per voxel from its own signals "
                       "(the Python API's default) instead of being given the noise map that varmap fit "
                       "estimates from the image")
    bench.set_defaults(handler=_cmd_bench)

    # ---- bids
    _add_bids_parser(commands, common)

    # ---- phantom
    phantom = commands.add_parser("phantom", parents=[common], help="write a digital brain phantom with ground truth")
    where = phantom.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", dest="output_dir", type=Path, help="output folder")
    where.add_argument("--bids", type=Path, metavar="DIR",
                       help="write a BIDS dataset of --subjects phantom subjects (own seed, field of view and noise "
                       "level each), ground truth in DIR/derivatives/truth")
    phantom.add_argument("--subjects", type=int, default=3, metavar="N", help="subjects of --bids (default 3)")
    phantom.add_argument("--force", action="store_true", help="replace an existing output folder")
    phantom.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    _add_phantom_arguments(phantom, "")
    phantom.set_defaults(handler=_cmd_phantom)

    # ---- demo
    demo = commands.add_parser("demo", parents=[common], help="small MS-DKI simulation study with figures")
    demo.add_argument("-o", "--output", dest="output_dir", type=Path, default=Path("demo_output"),
                      help="output folder (default demo_output)")
    demo.add_argument("--force", action="store_true", help="replace an existing output folder")
    _add_jobs_argument(demo, "")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _add_bids_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    bids = commands.add_parser(
        "bids", parents=[common], help="BIDS App: map a cohort into BIDS-Derivatives, on Dask",
        description="Find every subject's (and session's) DWI with its bval/bvec and mask through pybids, check "
        "them all, then either map each one as a Dask task into BIDS-Derivatives (participant; finished "
        "subjects are skipped, failures counted in the exit status) or train one population model on all of "
        "them into OUTPUT_DIR/group (group).",
    )
    bids.add_argument("bids_dir", metavar="BIDS_DIR", type=Path, help="root of the BIDS dataset")
    bids.add_argument("output_dir", metavar="OUTPUT_DIR", type=Path, help="root of the derivatives")
    bids.add_argument("analysis_level", metavar="LEVEL", choices=["participant", "group"],
                      help="participant: map every subject; group: train one population model")
    bids.add_argument("--model", choices=["msdki", "ball_stick"], default=None,
                      help="signal model (participant with --population-model: the model's own)")
    bids.add_argument("--method", choices=list(OPTIONS), default=None,
                      help="estimator (group: default gmvae; participant: required without --population-model)")
    bids.add_argument("--participant-label", nargs="+", default=None, metavar="LABEL",
                      help="subjects to process, with or without sub- (default all)")
    bids.add_argument("--session-label", nargs="+", default=None, metavar="LABEL",
                      help="sessions to process, with or without ses- (default all)")
    bids.add_argument("--bids-filter", nargs="+", default=[], metavar="ENTITY=VALUE",
                      help="pybids entities the DWI must have, e.g. space=T1w desc=preproc")
    where = bids.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="workers of a local Dask cluster (default: CPU cores, at most 4)")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="address (tcp://host:8786) or scheduler file of a running Dask scheduler")
    bids.add_argument("--population-model", type=Path, default=None, metavar="FILE",
                      help="participant: map every subject with this model.pt (no training)")
    bids.add_argument("--nproc", type=int, default=1, metavar="N",
                      help="group: torch.distributed training processes (default 1)")
    bids.add_argument("--voxels-per-subject", type=int, default=20_000, metavar="N",
                      help="group: voxels drawn from each subject (default 20000)")
    bids.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    bids.add_argument("--device", default="auto", choices=list(DEVICES),
                      help="auto: the GPU when one is present (default auto)")
    bids.add_argument("--force", action="store_true", help="redo subjects (or the group model) already done")
    bids.add_argument("--no-figure", dest="figure", action="store_false", help="no overview figure per subject")
    options = bids.add_argument_group("method options (as varmap fit)")
    for option, methods in method_flags().values():
        _add_method_option(options, option, methods)
    bids.set_defaults(handler=_cmd_bids)


def _add_jobs_argument(parser: argparse.ArgumentParser, prefix: str) -> None:
    default = min(4, os.cpu_count() or 1)
    parser.add_argument("--jobs", type=int, default=default,
                        help=f"{prefix}fits run at once, one process each (default: CPU cores, at most 4; here {default})")


def _add_phantom_arguments(parser: argparse.ArgumentParser, prefix: str) -> None:
    parser.add_argument("--phantom-model", default="msdki", choices=["msdki", "ball_stick"],
                        help=f"{prefix}signal model of the phantom (default msdki)")
    parser.add_argument("--voxel-size", type=float, default=1.25, help=f"{prefix}voxel size in mm (default 1.25)")
    parser.add_argument("--snr", type=float, default=10.0, help=f"{prefix}b=0 SNR of white matter (default 10)")
    parser.add_argument("--crop", type=int, nargs=3, metavar=("NX", "NY", "NZ"), default=None,
                        help=f"{prefix}keep a centred box of this many voxels")
    parser.add_argument("--noise-field", action="store_true",
                        help=f"{prefix}noise level varying smoothly over the head (factor 1 to 3, like a coil "
                        "sensitivity / g-factor profile; default: one noise level)")


def _add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bvals", required=True, type=Path, metavar="FILE", help="FSL bvals file (b-values in s/mm²)")
    parser.add_argument("--bvecs", required=True, type=Path, metavar="FILE", help="FSL bvecs file (3 rows)")
    parser.add_argument("--mask", type=Path, default=None, metavar="MASK",
                        help="brain mask in the DWI's grid (default: computed with median_otsu and saved)")
    parser.add_argument("--noise-map", type=Path, default=None, metavar="FILE",
                        help="noise standard deviation per voxel in raw signal units, in the DWI's grid (e.g. "
                        "MRtrix dwidenoise -noise; with two or more b=0 volumes it is compared with their "
                        "spread, and a map more than 10 %% off gets a warning); default: estimated from the scan (from two or more b=0 "
                        "volumes; otherwise from the residuals of voxelwise kurtosis fits, or, for a protocol "
                        "too short for them, dipy's local PCA estimate with one b=0 and pseudo-residuals "
                        "without) and saved as sigma.nii.gz")
    parser.add_argument("-o", "--output", dest="output_dir", required=True, type=Path, metavar="OUTDIR",
                        help="output folder (written atomically; refused if it exists, unless --force)")
    parser.add_argument("--device", default="auto", choices=list(DEVICES),
                        help="auto: the GPU when one is present (default auto)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-figure", dest="figure", action="store_false", help="do not draw overview.png")


# ---------------------------------------------------------------------------------------------- commands
def _cmd_fit(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .pipeline import fit_image

    options = {name: getattr(args, name) for name in method_flags() if hasattr(args, name)}
    fit_image(
        args.dwi, args.bvals, args.bvecs, mask=args.mask, noise_map=args.noise_map, model=args.model,
        method=args.method, output_dir=args.output_dir, seed=args.seed, device=args.device, force=args.force,
        progress=not args.quiet, figure=args.figure, command=command_line(argv), **options,
    )
    return 0


def _cmd_apply(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .pipeline import apply_checkpoint

    apply_checkpoint(
        args.checkpoint, args.dwi, args.bvals, args.bvecs, mask=args.mask, noise_map=args.noise_map,
        sigma=args.sigma, output_dir=args.output_dir,
        device=args.device, force=args.force, progress=not args.quiet, figure=args.figure,
        command=command_line(argv),
    )
    return 0


def _cmd_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.model == "phantom":
        return _bench_phantom(args)
    from .evaluation.study import format_markdown, run_study

    extra = {"prior": args.prior} if hasattr(args, "prior") else {}
    output_dir = args.output_dir if args.output_dir is not None else Path("bench_output") / args.model
    result = run_study(
        model=args.model, snrs=[float(s) for s in args.snrs], n_voxels=int(args.n_voxels),
        methods=list(args.methods), seed=int(args.seed), output_dir=Path(output_dir),
        n_oracle=int(args.n_oracle), force=bool(args.force), progress=not args.quiet and args.jobs == 1,
        n_jobs=int(args.jobs), noise_variation=float(args.noise_variation),
        S0_range=None if args.s0_range is None else tuple(args.s0_range), sigma_known=bool(args.sigma_known),
        protocol=args.protocol, **extra,
    )
    title = f"{args.model} simulation study: {result.variant}" if result.variant else None
    print(format_markdown(result.rows, title=title))
    logger.info("study written to %s", output_dir)
    return 0


def _bench_phantom(args: argparse.Namespace) -> int:
    from .evaluation.phantom_study import format_phantom_markdown, run_phantom_study

    output_dir = args.output_dir if args.output_dir is not None else Path("bench_output") / "phantom"
    options = {} if args.n_epochs is None else {
        method: {"n_epochs": args.n_epochs} for method in args.methods if method != "nlls"
    }
    result = run_phantom_study(
        model=args.phantom_model, voxel_size=args.voxel_size, snr=args.snr, methods=list(args.methods),
        seed=int(args.seed), crop=args.crop, output_dir=Path(output_dir), force=bool(args.force),
        progress=not args.quiet, include_dipy=not args.no_dipy, method_options=options,
        noise_field=bool(args.noise_field), image_noise_map=not args.per_voxel_sigma,
    )
    print(format_phantom_markdown(result))
    logger.info("phantom study written to %s", output_dir)
    return 0


def _cmd_bids(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .cohort.app import run_group_level, run_participant_level
    from .cohort.discovery import parse_filters

    options = {name: getattr(args, name) for name in method_flags() if hasattr(args, name)}
    selection = {"participant_labels": args.participant_label, "session_labels": args.session_label,
                 "bids_filters": parse_filters(args.bids_filter)}
    if args.analysis_level == "group":
        if args.model is None:
            raise ValueError("the group level needs --model (msdki or ball_stick).")
        path = run_group_level(
            args.bids_dir, args.output_dir, model=args.model, method=args.method or "gmvae", n_proc=args.nproc,
            seed=args.seed, voxels_per_subject=args.voxels_per_subject, device=args.device,
            progress=not args.quiet, force=args.force, **selection, **options,
        )
        logger.info("population model written to %s; map the subjects with: varmap bids %s %s participant "
                    "--population-model %s", path, args.bids_dir, args.output_dir, path)
        return 0
    report = run_participant_level(
        args.bids_dir, args.output_dir, model=args.model, method=args.method, population_model=args.population_model,
        workers=args.workers, scheduler=args.scheduler, seed=args.seed,
        device=args.device, force=args.force, figure=args.figure, command=command_line(argv), **selection, **options,
    )
    if report.failed:
        print(f"varmap: {len(report.failed)} scan(s) failed: {', '.join(report.failed)}", file=sys.stderr)
    return report.exit_status


def _cmd_phantom(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .phantom import make_phantom, write_phantom

    if args.bids is not None:
        return _phantom_cohort(args)
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not args.force:
        raise FileExistsError(f"{output_dir} exists; choose another folder or pass --force to replace it.")
    phantom = make_phantom(model=args.phantom_model, voxel_size=args.voxel_size, snr=args.snr,
                           seed=args.seed, crop=args.crop, noise_field=bool(args.noise_field))
    write_phantom(phantom, output_dir, force=bool(args.force))
    logger.info("phantom (%s) written to %s", " x ".join(map(str, phantom.dwi.shape)), output_dir)
    return 0


def _phantom_cohort(args: argparse.Namespace) -> int:
    from .phantom.cohort import write_phantom_cohort

    write_phantom_cohort(args.bids, n_subjects=args.subjects, model=args.phantom_model, voxel_size=args.voxel_size,
                         snr=args.snr, seed=args.seed, crop=args.crop, noise_field=bool(args.noise_field),
                         force=bool(args.force))
    logger.info("phantom cohort of %d subjects written to %s (ground truth in %s/derivatives/truth)", args.subjects,
                args.bids, args.bids)
    return 0


def _cmd_demo(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .evaluation.study import run_demo

    run_demo(output_dir=Path(args.output_dir), force=bool(args.force), progress=not args.quiet and args.jobs == 1,
             n_jobs=int(args.jobs))
    logger.info("demo written to %s", args.output_dir)
    return 0


# ---------------------------------------------------------------------------------------------- main
def _configure_logging(quiet: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("varmap: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    return handler


def _log_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    """Show a warning raised during a command as the command's other messages are shown."""
    logger.warning("warning: %s", " ".join(str(message).split()))


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, KeyError):
        message = f"missing key {message}"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``varmap`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0 on success, 2 on a user error or bad arguments (one line on stderr), 1 on an internal error
    (with traceback), 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help, --version or a usage error (already printed)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    debug = bool(getattr(args, "debug", False))
    quiet = bool(getattr(args, "quiet", False))
    previous_level, previous_propagate = logger.level, logger.propagate
    handler = _configure_logging(quiet)
    try:
        with warnings.catch_warnings():  # the library's warnings, as one "varmap: warning:" line each
            warnings.showwarning = _log_warning
            return int(args.handler(args, argv))
    except KeyboardInterrupt:
        print("varmap: interrupted; no output folder was written.", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if debug:
            traceback.print_exc()
        print(f"varmap: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug: say so, with the traceback
        traceback.print_exc()
        print(f"varmap: internal error: {type(error).__name__}: {_one_line(error)} -- please report it.",
              file=sys.stderr)
        return 1
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
