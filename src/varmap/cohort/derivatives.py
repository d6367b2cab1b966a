"""The BIDS-Derivatives dataset: ``dataset_description.json``, and one scan's maps renamed with their sidecars.

:func:`varmap.fit_image` (or :func:`varmap.apply_checkpoint`) writes a scan's outputs under varmap's
own names; :func:`to_bids` moves them, inside the scan's temporary folder, to their BIDS names
(:func:`~varmap.cohort.naming.output_name`) and writes a JSON sidecar beside every map.
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

from .. import __version__, io
from .naming import MODEL_LABELS, BidsPrefix, output_name
from .population import ScanFiles

__all__ = ["write_dataset_description", "to_bids", "sidecar", "BIDS_VERSION", "FIT_RECORD_SUFFIX",
           "CHECKPOINT_SUFFIX"]

#: BIDS version the derivatives follow.
BIDS_VERSION = "1.10.0"
#: Name endings of the per-scan fit record (varmap's fit.json) and checkpoint (model.pt).
FIT_RECORD_SUFFIX = "fit.json"
CHECKPOINT_SUFFIX = "checkpoint.pt"

#: What the maps that are not model parameters hold.
_DESCRIPTIONS = {
    "S0": "fitted non-diffusion-weighted (b=0) signal",
    "cluster_probs": "posterior probability of each mixture component (one volume per component k)",
    "clusters": "most probable mixture component: k + 1 for component k, 0 outside the mask",
    "rmse": "root-mean-square error of the predicted vs measured S/S0 (goodness of fit)",
    "ess": "effective sample size of the importance weights behind the posterior maps (vae, gmvae)",
    "sigma": "noise standard deviation used by the fit (raw signal units)",
    "mask": "brain mask of the fit (1 = in the mask)",
}


def write_dataset_description(output_dir: str | PathLike, bids_dir: str | PathLike) -> Path:
    """Write ``output_dir/dataset_description.json`` of varmap's derivatives of ``bids_dir``.

    The content depends only on the two folders and varmap's version, so every run writes the same.

    Returns
    -------
    Path
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    source = Path(bids_dir).absolute().as_uri()
    description = {
        "Name": "varmap parameter maps",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "varmap",
            "Version": __version__,
            "Description": "self-supervised variational parameter mapping for diffusion MRI",
        }],
        "SourceDatasets": [{"URL": source}],
        "DatasetLinks": {"raw": source},
    }
    return io.save_json(description, output_dir / "dataset_description.json")


def sidecar(
    output: str,
    *,
    model: str,
    fit_record: dict,
    scan: ScanFiles,
    bids_dir: Path,
    fit_record_name: str,
) -> dict:
    """The JSON sidecar of one output map.

    Parameters
    ----------
    output : str
        varmap's name of the map (``D``, ``K_std``, ``clusters``...).
    model : str
    fit_record : dict
        The scan's fit.json content (:func:`varmap.provenance.fit_record`).
    scan : ScanFiles
        Its files are the sidecar's ``Sources``.
    bids_dir : Path
        Root of the input dataset, for the ``bids:raw:`` URIs of the sources.
    fit_record_name : str
        File name of the scan's fit record, beside the map.

    Returns
    -------
    dict
        ``Description``, ``Units``, ``Model``, ``Method``, ``EstimatorSettings``, ``Seed``,
        ``VarmapVersion``, ``Sources``, ``FitRecord``; the fibre direction also has BEP016's
        ``OrientationEncoding`` (unit vectors in voxel axes).
    """
    from ..signal_models import SIGNAL_MODELS

    config = fit_record["config"]
    parameters = {p.name: p.description for p in SIGNAL_MODELS[model].parameters}
    parameters["n"] = "fibre (stick) direction, unit vector; n and -n are one fibre"
    name = output[: -len("_std")] if output.endswith("_std") else output
    description = parameters.get(name, _DESCRIPTIONS.get(name, name))
    if output.endswith("_std"):
        description = f"posterior standard deviation of the {description}"
    content = {
        "Description": description,
        "Units": fit_record["units"].get(output, ""),
        "Model": {"Name": model, "Label": MODEL_LABELS[model]},
        "Method": config["method"],
        "EstimatorSettings": config.get("estimator", {}),
        "Seed": fit_record.get("seed"),
        "VarmapVersion": __version__,
        "Sources": [_bids_uri(path, bids_dir) for path in _scan_sources(scan)],
        "FitRecord": fit_record_name,
    }
    if "checkpoint" in config:
        content["PopulationModel"] = config["checkpoint"]
    if output == "n":
        content["OrientationEncoding"] = {"Type": "unit3vector", "Reference": "ijk"}
    return content


def to_bids(
    fit_dir: Path,
    scan_dir: Path,
    *,
    prefix: BidsPrefix,
    model: str,
    fit_record: dict,
    scan: ScanFiles,
    bids_dir: Path,
) -> list[Path]:
    """Move a scan's outputs from varmap's names in ``fit_dir`` to BIDS names under ``scan_dir``.

    Parameters
    ----------
    fit_dir : Path
        Output folder of :func:`varmap.fit_image` / :func:`varmap.apply_checkpoint`; removed when empty.
    scan_dir : Path
        The scan's (temporary) folder: maps, sidecars, fit record and checkpoint go to ``dwi/``, the
        overview figure to ``figures/``.
    prefix : BidsPrefix
    model : str
    fit_record : dict
        The content of the run's fit.json (:attr:`varmap.ImageFitResult.metadata`).
    scan : ScanFiles
    bids_dir : Path

    Returns
    -------
    list of Path
        The files under ``scan_dir``.

    Raises
    ------
    ValueError
        For an output file this module does not name (:func:`~varmap.cohort.naming.output_name`).
    """
    dwi_dir = scan_dir / "dwi"
    dwi_dir.mkdir(parents=True, exist_ok=True)
    head = f"{prefix.stem}_model-{MODEL_LABELS[model]}"
    record_name = f"{head}_{FIT_RECORD_SUFFIX}"
    written = []
    for path in sorted(fit_dir.glob("*.nii.gz")):
        output = path.name[: -len(".nii.gz")]
        name = output_name(output, model, prefix)
        os.replace(path, dwi_dir / name)
        content = sidecar(output, model=model, fit_record=fit_record, scan=scan, bids_dir=bids_dir,
                          fit_record_name=record_name)
        written += [dwi_dir / name, io.save_json(content, dwi_dir / name.replace(".nii.gz", ".json"))]
    moves = {"fit.json": dwi_dir / record_name, "model.pt": dwi_dir / f"{head}_{CHECKPOINT_SUFFIX}",
             "overview.png": scan_dir / "figures" / f"{head}_overview.png"}
    for source, target in moves.items():
        if (fit_dir / source).exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(fit_dir / source, target)
            written.append(target)
    left = sorted(p.name for p in fit_dir.iterdir())
    if left:
        raise ValueError(f"varmap.cohort.derivatives has no BIDS name for {', '.join(left)} in {fit_dir}; "
                         f"add one to to_bids.")
    fit_dir.rmdir()
    return written


def _scan_sources(scan: ScanFiles) -> list[Path]:
    return [path for path in (scan.dwi, scan.bvals, scan.bvecs, scan.mask) if path is not None]


def _bids_uri(path: Path, bids_dir: Path) -> str:
    """``bids:raw:<path relative to the dataset>``, or the absolute path for a file outside it."""
    try:
        return f"bids:raw:{Path(path).absolute().relative_to(Path(bids_dir).absolute()).as_posix()}"
    except ValueError:
        return str(Path(path).absolute())
