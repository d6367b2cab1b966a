"""BIDS-Derivatives names of varmap's outputs, after the diffusion-derivatives convention (BEP016, QSIRecon).

A parameter map of subject 01, session 1, fitted with MS-DKI is
``sub-01/ses-1/dwi/sub-01_ses-1_model-msdki_param-md_dwimap.nii.gz``: the entities of the source DWI
that tell scans apart (``acq``, ``rec``, ``dir``, ``run``, ``space``) are kept, then ``model-`` names the
signal model and ``param-`` the parameter (:data:`PARAM_LABELS`); the posterior standard deviation of a
parameter adds ``desc-std``; statistics that are not model parameters use ``stat-`` (QSIPrep's
``model-eddy_stat-cnr``).  Everything here is string work: no file is read or written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

__all__ = [
    "MODEL_LABELS",
    "PARAM_LABELS",
    "SOURCE_ENTITIES",
    "PYBIDS_CONFIG",
    "BidsPrefix",
    "source_entities",
    "output_name",
]

#: ``model-`` label of every signal model (BIDS labels are alphanumeric).
MODEL_LABELS: dict[str, str] = {"msdki": "msdki", "ball_stick": "ballstick"}

#: ``param-`` label of every output parameter, per signal model.  ``S0`` (the fitted b=0 signal) is
#: ``s0`` for every model.
PARAM_LABELS: dict[str, dict[str, str]] = {
    "msdki": {"D": "md", "K": "mk", "S0": "s0"},
    "ball_stick": {"f": "fstick", "d_par": "dstick", "d_iso": "dball", "n": "stickdir", "S0": "s0"},
}

#: Entities of the source DWI kept in the output names, in BIDS order (after ``sub`` and ``ses``).
SOURCE_ENTITIES: tuple[str, ...] = ("acq", "rec", "dir", "run", "space")

#: ``config`` argument of ``bids.BIDSLayout`` that indexes the ``param-`` and ``stat-`` entities of
#: varmap's derivatives too (pybids' own configurations know ``model-`` and ``desc-`` only).
PYBIDS_CONFIG: list = [
    "bids",
    "derivatives",
    {
        "name": "varmap",
        "entities": [
            {"name": "param", "pattern": r"[_/\\]+param-([a-zA-Z0-9]+)"},
            {"name": "stat", "pattern": r"[_/\\]+stat-([a-zA-Z0-9]+)"},
        ],
    },
]

_ENTITY = re.compile(r"(?:^|_)([a-zA-Z0-9]+)-([a-zA-Z0-9]+)(?=_)")


@dataclass(frozen=True)
class BidsPrefix:
    """Where one scan's derivatives go, and how their names start.

    Attributes
    ----------
    subject : str
        Label without ``sub-``.
    session : str or None
        Label without ``ses-``.
    entities : tuple of (str, str)
        Entities of the source DWI kept in the names (:data:`SOURCE_ENTITIES`), in order.
    """

    subject: str
    session: str | None = None
    entities: tuple[tuple[str, str], ...] = ()

    @property
    def folder(self) -> Path:
        """``sub-<label>[/ses-<label>]``, relative to the derivatives root: the unit written atomically."""
        folder = Path(f"sub-{self.subject}")
        return folder / f"ses-{self.session}" if self.session is not None else folder

    @property
    def name(self) -> str:
        """``sub-<label>[ses-<label>]``, as printed in messages."""
        return f"sub-{self.subject}" + (f" ses-{self.session}" if self.session is not None else "")

    @property
    def stem(self) -> str:
        """``sub-<label>[_ses-<label>][_acq-...]...``: the start of every file name."""
        parts = [f"sub-{self.subject}"]
        if self.session is not None:
            parts.append(f"ses-{self.session}")
        parts += [f"{key}-{value}" for key, value in self.entities]
        return "_".join(parts)


def source_entities(dwi: str | PathLike) -> tuple[tuple[str, str], ...]:
    """The entities of a DWI file name that go into its derivatives' names (:data:`SOURCE_ENTITIES`).

    Parameters
    ----------
    dwi : path
        A BIDS DWI file, e.g. ``sub-01_ses-1_acq-hardi_space-T1w_desc-preproc_dwi.nii.gz``.

    Returns
    -------
    tuple of (str, str)
        ``(("acq", "hardi"), ("space", "T1w"))`` for the example, in :data:`SOURCE_ENTITIES` order.
    """
    found = dict(_ENTITY.findall(Path(dwi).name))
    return tuple((key, found[key]) for key in SOURCE_ENTITIES if key in found)


def output_name(output: str, model: str, prefix: BidsPrefix) -> str:
    """The BIDS-Derivatives file name of one of :func:`varmap.fit_image`'s output maps.

    Parameters
    ----------
    output : str
        The map's varmap name, the file name without ``.nii.gz``: a parameter (``D``), ``S0``,
        ``<param>_std``, ``cluster_probs``, ``clusters``, ``rmse``, ``ess``, ``sigma`` or ``mask``.
    model : str
        Registered signal model.
    prefix : BidsPrefix

    Returns
    -------
    str
        For example ``sub-01_model-msdki_param-md_dwimap.nii.gz``,
        ``sub-01_model-msdki_param-mk_desc-std_dwimap.nii.gz``,
        ``sub-01_model-msdki_desc-clusters_probseg.nii.gz`` (posterior component probabilities, one
        volume per component), ``..._desc-clusters_dseg.nii.gz`` (most probable component, 1..K),
        ``..._model-msdki_stat-rmse_dwimap.nii.gz``, ``..._model-msdki_stat-ess_dwimap.nii.gz`` (effective
        sample size of the posterior maps), ``..._model-msdki_stat-sigma_dwimap.nii.gz`` (noise level)
        and ``sub-01_desc-brain_mask.nii.gz``.

    Raises
    ------
    ValueError
        For a model or an output this table does not name, listing those it does.
    """
    if model not in PARAM_LABELS:
        raise ValueError(f"no BIDS labels for model {model!r}; known models: {', '.join(sorted(PARAM_LABELS))}.")
    labels = PARAM_LABELS[model]
    head = f"{prefix.stem}_model-{MODEL_LABELS[model]}"
    fixed = {
        "cluster_probs": f"{head}_desc-clusters_probseg",
        "clusters": f"{head}_desc-clusters_dseg",
        "rmse": f"{head}_stat-rmse_dwimap",
        "ess": f"{head}_stat-ess_dwimap",
        "sigma": f"{head}_stat-sigma_dwimap",
        "mask": f"{prefix.stem}_desc-brain_mask",
    }
    if output in fixed:
        stem = fixed[output]
    elif output in labels:
        stem = f"{head}_param-{labels[output]}_dwimap"
    elif output.endswith("_std") and output[: -len("_std")] in labels:
        stem = f"{head}_param-{labels[output[: -len('_std')]]}_desc-std_dwimap"
    else:
        known = sorted([*labels, *(f"{name}_std" for name in labels), *fixed])
        raise ValueError(f"no BIDS name for the {model} output {output!r}; named outputs: {', '.join(known)}.")
    return f"{stem}.nii.gz"
