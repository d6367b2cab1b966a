"""The one image pipeline: :func:`fit_image` and :func:`apply_checkpoint` in named steps.

Both check every input before any heavy work, decide the brain mask, then hand the scan and an
estimator to :func:`_map_scan`: read the masked voxels, ``estimator.fit`` (or ``.transform``), maps in
image space, fit.json's record and, with an output folder, every file.
"""

from __future__ import annotations

import logging
import time
from os import PathLike
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..io import check_input_file, check_output_dir
from ..provenance import fit_record, jsonable, python_call
from .checkpoint import checkpoint_of, restore_estimator
from .checks import checked_device, checked_options
from .maps import image_maps
from .noise import NoiseLevel, noise_level
from .noise_maps import NOISE_MAP_METHODS
from .outputs import write_outputs
from .result import ImageFitResult
from .scan import Scan, brain_mask, computed_mask_note, open_scan, read_signals

if TYPE_CHECKING:
    import numpy as np

    from ..estimators import Estimator

__all__ = ["fit_image", "apply_checkpoint"]

logger = logging.getLogger("varmap")

_T = TypeVar("_T")


def fit_image(
    dwi: str | PathLike,
    bvals: str | PathLike,
    bvecs: str | PathLike,
    *,
    mask: str | PathLike | None = None,
    noise_map: str | PathLike | None = None,
    model: str = "msdki",
    method: str = "gmvae",
    output_dir: str | PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
    figure: bool = True,
    command: str | None = None,
    **options: Any,
) -> ImageFitResult:
    """Fit a signal model to every voxel of a 4-D diffusion image and write the maps.

    Parameters
    ----------
    dwi : path
        4-D NIfTI image (.nii or .nii.gz).
    bvals, bvecs : path
        FSL text files (b-values in s/mm², directions as three rows).
    mask : path, optional
        Brain mask in the DWI's voxel grid (values > 0 are in).  Default: computed with dipy's
        ``median_otsu`` on the mean b=0 image (holes filled) and saved as ``mask.nii.gz``.
    noise_map : path, optional
        Noise standard deviation of every voxel (raw signal units), a NIfTI image in the DWI's grid,
        finite and positive in the mask (e.g. MRtrix ``dwidenoise -noise``).  Default: estimated from
        the scan (:mod:`varmap.pipeline.noise_maps`), unless ``sigma`` gives one number.
    model : {"msdki", "ball_stick"}
    method : {"nlls", "selfsup", "vae", "gmvae"}
    output_dir : path, optional
        Folder for the maps, ``fit.json``, ``model.pt`` and ``overview.png``; written atomically.
        ``None`` writes nothing.
    seed : int
        Seed of every random draw.
    device : {"auto", "cpu", "cuda"} or "cuda:N"
        ``"auto"``: the GPU when one is present.
    force : bool
        Replace an existing ``output_dir``.
    progress : bool
        tqdm bars for reading, training and inference.
    figure : bool
        Draw ``overview.png``.
    command : str, optional
        The command line recorded in ``fit.json`` (the CLI passes its own); default the Python call.
    **options
        Estimator options of ``method`` (:data:`varmap.estimators.options.OPTIONS`: ``n_epochs``,
        ``batch_size``, ``n_components``, ``likelihood``, ``sigma``: one noise standard deviation for
        the whole scan in raw signal units...).  Only these are passed, so the estimator's defaults rule
        the rest.

    Returns
    -------
    ImageFitResult

    Raises
    ------
    FileNotFoundError, FileExistsError, InputError, ProtocolError, ValueError
        On bad input, before any heavy work; nothing is written.

    Notes
    -----
    The estimator gets one noise level per voxel (``sigma=``): from ``noise_map``, or estimated from
    the scan by the method that measured best for its protocol (:func:`.noise_maps.default_method`),
    or ``sigma`` in every voxel.  It is written as ``sigma.nii.gz`` (0 outside the mask); fit.json's
    ``noise`` records the method, its parameters and the map's median and 5th/95th percentiles.
    """
    started = time.perf_counter()
    if command is None:
        command = python_call("fit_image", dwi, bvals, bvecs, mask=mask, noise_map=noise_map, model=model,
                              method=method, output_dir=output_dir, seed=seed, device=device, **options)
    # ---- check every input before any heavy work
    if output_dir is not None:
        check_output_dir(output_dir, force=force)
    options = checked_options(method, options)
    torch_device = checked_device(device)
    scan = open_scan(dwi, bvals, bvecs, mask=mask, noise_map=noise_map)
    from ..signal_models import get_signal_model

    signal_model = get_signal_model(model, scan.protocol)
    timings = {"check_s": time.perf_counter() - started}
    logger.info("fitting %s with %s on %s (%s), device %s", model, method, scan.image.path.name,
                "x".join(map(str, scan.image.shape)), torch_device)

    # ---- mask, noise level, estimator
    mask_array = _timed(timings, "mask_s", brain_mask, scan)
    noise = _timed(timings, "noise_s", noise_level, scan, mask_array, sigma=options.get("sigma"),
                   noise_map=noise_map)
    from ..estimators import get_estimator

    estimator = get_estimator(method, signal_model, seed=seed, device=torch_device, progress=progress,
                              **{**options, "sigma": noise.sigma})

    # ---- the scan mapped
    config = {"model": model, "method": method, "seed": seed, "device": str(torch_device),
              "options": jsonable(options)}
    return _map_scan(scan, mask_array, estimator, noise, kind="fit", command=command, config=config,
                     input_files=scan.files, output_dir=output_dir, force=force, figure=figure,
                     progress=progress, timings=timings, started=started)


def apply_checkpoint(
    checkpoint: str | PathLike,
    dwi: str | PathLike,
    bvals: str | PathLike,
    bvecs: str | PathLike,
    *,
    mask: str | PathLike | None = None,
    noise_map: str | PathLike | None = None,
    sigma: float | None = None,
    output_dir: str | PathLike | None = None,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
    figure: bool = True,
    command: str | None = None,
) -> ImageFitResult:
    """Map a new scan with a trained checkpoint (``model.pt`` of :func:`fit_image`), without training.

    The scan must have the protocol of the checkpoint (same b-values and directions, in order).
    Parameters and outputs are those of :func:`fit_image`, without ``model.pt``; ``fit.json`` names the
    checkpoint and its checksum.  The new scan's noise level is its own: ``noise_map``, ``sigma`` (one
    number, raw signal units), or a noise map estimated from the scan by the method the fit used (the
    protocol's default when the fit was given its noise level).

    Raises
    ------
    FileNotFoundError, FileExistsError, InputError, ProtocolError
        Including a checkpoint that is not varmap's or a scan of another protocol.
    """
    started = time.perf_counter()
    if command is None:
        command = python_call("apply_checkpoint", checkpoint, dwi, bvals, bvecs, mask=mask, noise_map=noise_map,
                              sigma=sigma, output_dir=output_dir, device=device)
    # ---- check every input before any heavy work
    if output_dir is not None:
        check_output_dir(output_dir, force=force)
    torch_device = checked_device(device)
    checkpoint = check_input_file(checkpoint, "checkpoint")
    scan = open_scan(dwi, bvals, bvecs, mask=mask, noise_map=noise_map)
    estimator, saved = restore_estimator(checkpoint, scan, device=torch_device, progress=progress)
    timings = {"check_s": time.perf_counter() - started}
    method = saved["state"]["method"]
    logger.info("applying %s checkpoint (%s, %s) to %s, device %s", method, saved["model"], checkpoint.name,
                scan.image.path.name, torch_device)

    # ---- the scan mapped
    mask_array = _timed(timings, "mask_s", brain_mask, scan)
    fitted_with = saved.get("noise", {}).get("method")  # "given", "file" or an estimator of noise maps
    noise = _timed(timings, "noise_s", noise_level, scan, mask_array, sigma=sigma, noise_map=noise_map,
                   method=fitted_with if fitted_with in NOISE_MAP_METHODS else None)
    config = {"model": saved["model"], "method": method, "device": str(torch_device),
              "checkpoint": str(checkpoint), "checkpoint_varmap_version": saved.get("varmap_version")}
    return _map_scan(scan, mask_array, estimator, noise, kind="apply", command=command, config=config,
                     input_files={"checkpoint": checkpoint, **scan.files}, output_dir=output_dir, force=force,
                     figure=figure, progress=progress, timings=timings, started=started)


def _map_scan(
    scan: Scan,
    mask: "np.ndarray",
    estimator: "Estimator",
    noise: NoiseLevel,
    *,
    kind: str,
    command: str,
    config: dict,
    input_files: dict,
    output_dir: str | PathLike | None,
    force: bool,
    figure: bool,
    progress: bool,
    timings: dict[str, float],
    started: float,
) -> ImageFitResult:
    """Read the mask's voxels, fit (``kind="fit"``, the estimator holds ``noise``) or transform them with
    ``noise``, and make maps, record and files."""
    signals, voxels = _timed(timings, "read_s", read_signals, scan, mask, progress=progress)
    if kind == "fit":
        fit = _timed(timings, "fit_s", estimator.fit, signals)
    else:
        fit = _timed(timings, "fit_s", estimator.transform, signals, sigma=noise.sigma)
    timings.update({f"fit_{stage}": seconds for stage, seconds in fit.timings.items()})
    logger.info("%s %d voxels in %.1f s", "fitted" if kind == "fit" else "mapped", int(voxels.valid.sum()),
                timings["fit_s"])
    noise_record = noise.record(fit.sigma)
    config.update({
        "seed": fit.seed,
        "estimator": jsonable(fit.config),
        "mask": "given" if not scan.mask_computed else computed_mask_note(scan.protocol),
        "sigma": noise_record["median"],
        "sigma_source": noise.source,
    })
    maps, units = _timed(timings, "maps_s", image_maps, fit, signals, mask)
    metadata = fit_record(kind=kind, command=command, config=config, image=scan.image, protocol=scan.protocol,
                          voxels=voxels, mask_computed=scan.mask_computed, units=units, history=fit.history,
                          timings=timings)
    metadata["noise"] = noise_record
    result = ImageFitResult(maps=maps, units=units, mask=mask, affine=scan.image.affine, header=scan.image.header,
                            fit=fit, estimator=estimator, metadata=metadata)
    if output_dir is None:
        timings["total_s"] = time.perf_counter() - started
        return result
    write_outputs(
        result, output_dir, input_files=input_files, force=force, started=started, zooms=scan.image.zooms,
        checkpoint=checkpoint_of(config["model"], scan.protocol, estimator, noise) if kind == "fit" else None,
        figure_title=f"{config['model']} / {config['method']} -- {scan.image.path.name}" if figure else None,
    )
    counts = metadata["voxels"]
    excluded = f" ({counts['excluded']} excluded)" if counts["excluded"] else ""
    logger.info("%s done: %s/%s, %d voxels%s, %.1f s; outputs in %s", kind, config["model"], config["method"],
                counts["fitted"], excluded, timings["total_s"], result.output_dir)
    return result


def _timed(timings: dict[str, float], key: str, step: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``step(*args, **kwargs)``, its wall time stored as ``timings[key]`` (seconds)."""
    t0 = time.perf_counter()
    value = step(*args, **kwargs)
    timings[key] = time.perf_counter() - t0
    return value
