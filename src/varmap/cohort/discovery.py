"""The scans of a BIDS dataset, found through pybids: each subject's (and session's) DWI, bval, bvec, mask.

A subject/session is one scan: one DWI series (``dwi/*_dwi.nii[.gz]``, after the user's entity
filters), its ``.bval``/``.bvec`` (beside it or inherited from a higher level, as BIDS allows), and a
brain mask when the dataset has one (``dwi/*_mask.nii[.gz]`` of the same space; ``desc-brain``
preferred).  What cannot be used is not raised but collected, per scan, so that every problem of every
subject is listed at once (:func:`find_scans`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from ..io import InputError
from .naming import BidsPrefix, source_entities
from .population import ScanFiles

__all__ = ["find_scans", "parse_filters", "bids_label"]

_NIFTI = [".nii", ".nii.gz"]


def bids_label(label: str, entity: str) -> str:
    """``"sub-01"`` or ``"01"`` -> ``"01"`` (``entity`` is ``"sub"`` or ``"ses"``), as BIDS Apps accept both."""
    label = str(label)
    return label[len(entity) + 1 :] if label.startswith(f"{entity}-") else label


#: pybids' names of the entities whose BIDS keys differ.
_PYBIDS_NAMES = {"sub": "subject", "ses": "session", "acq": "acquisition", "rec": "reconstruction",
                 "dir": "direction", "ce": "ceagent"}


def parse_filters(pairs: Sequence[str]) -> dict[str, str]:
    """``["acq=hardi", "space=T1w"]`` -> ``{"acquisition": "hardi", "space": "T1w"}``: pybids' entity names.

    BIDS keys (``acq``, ``rec``, ``dir``...) and pybids names (``acquisition``...) are both accepted.

    Raises
    ------
    InputError
        For an item without ``=``.
    """
    filters = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise InputError(f"--bids-filter {pair!r} is not ENTITY=VALUE; write e.g. space=T1w or desc=preproc.")
        filters[_PYBIDS_NAMES.get(key, key)] = value
    return filters


def find_scans(
    bids_dir: str | PathLike,
    *,
    participant_labels: Sequence[str] | None = None,
    session_labels: Sequence[str] | None = None,
    filters: Mapping[str, str] | None = None,
) -> tuple[list[tuple[BidsPrefix, ScanFiles]], dict[str, list[str]]]:
    """Every usable scan of a BIDS dataset, and what is wrong with the others.

    Parameters
    ----------
    bids_dir : path
        Root of a BIDS dataset (raw, or the derivatives of a preprocessing pipeline such as QSIPrep);
        indexed with ``bids.BIDSLayout(validate=False)``.
    participant_labels, session_labels : sequence of str, optional
        Subjects and sessions to keep (with or without ``sub-``/``ses-``); default all.
    filters : mapping, optional
        Further pybids entities every DWI must have (``{"space": "T1w", "desc": "preproc"}``).

    Returns
    -------
    scans : list of (BidsPrefix, ScanFiles)
        Sorted by subject, then session; the prefix names the scan's derivatives.
    problems : dict of list of str
        Per scan that cannot be used (keyed by :attr:`BidsPrefix.name`): what is missing or ambiguous.

    Raises
    ------
    InputError
        If ``bids_dir`` cannot be indexed, a requested participant does not exist, or no DWI is found.
    """
    layout = _layout(bids_dir)
    filters = dict(filters or {})
    subjects = _selected(layout.get_subjects(), participant_labels, "sub", "participant", bids_dir)
    scans: list[tuple[BidsPrefix, ScanFiles]] = []
    problems: dict[str, list[str]] = {}
    for subject in subjects:
        sessions = layout.get_sessions(subject=subject, datatype="dwi") or [None]
        if session_labels is not None:
            wanted = {bids_label(s, "ses") for s in session_labels}
            sessions = [s for s in sessions if s in wanted]
        for session in sessions:
            where = {"subject": subject, **({"session": session} if session is not None else {})}
            prefix = BidsPrefix(subject=subject, session=session)
            dwis = layout.get(datatype="dwi", suffix="dwi", extension=_NIFTI, **where, **filters)
            if len(dwis) != 1:
                problems[prefix.name] = [_dwi_count_problem(dwis, bids_dir, filters)]
                continue
            scan, scan_problems = _scan_files(layout, dwis[0], subject, session)
            if scan is None:
                problems[prefix.name] = scan_problems
                continue
            scans.append((BidsPrefix(subject=subject, session=session, entities=source_entities(scan.dwi)), scan))
    if not scans and not problems:
        raise InputError(f"no DWI series (dwi/*_dwi.nii[.gz]) in {bids_dir} for the selected subjects and "
                         f"sessions{_filter_text(filters)}; check the dataset and the labels.")
    return scans, problems


def _layout(bids_dir: str | PathLike) -> Any:
    import bids

    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(f"BIDS folder {bids_dir} does not exist; give the root of a BIDS dataset.")
    try:
        return bids.BIDSLayout(bids_dir, validate=False)
    except Exception as err:  # pybids raises its own validation and value errors
        message = " ".join(str(err).split())
        raise InputError(f"{bids_dir} cannot be indexed as a BIDS dataset ({message}); it needs a "
                         f"dataset_description.json and sub-<label>/ folders.") from None


def _selected(available: list[str], wanted: Sequence[str] | None, entity: str, what: str, bids_dir: Any) -> list[str]:
    available = sorted(available)
    if wanted is None:
        return available
    labels = [bids_label(label, entity) for label in wanted]
    missing = [label for label in labels if label not in available]
    if missing:
        raise InputError(
            f"{what} label(s) {', '.join(missing)} not found in {bids_dir}; it has {entity}-"
            f"{', '.join(available) or '(none)'}."
        )
    return sorted(set(labels))


def _dwi_count_problem(dwis: list, bids_dir: Any, filters: Mapping[str, str]) -> str:
    if not dwis:
        return f"no DWI series (dwi/*_dwi.nii[.gz]){_filter_text(filters)} in {bids_dir}"
    names = ", ".join(Path(f.path).name for f in dwis)
    return (f"{len(dwis)} DWI series ({names}); varmap maps one per subject and session: choose one with "
            f"--bids-filter (e.g. acq=..., space=..., desc=preproc)")


def _filter_text(filters: Mapping[str, str]) -> str:
    return f" with {', '.join(f'{k}={v}' for k, v in filters.items())}" if filters else ""


def _scan_files(layout: Any, dwi: Any, subject: str, session: str | None) -> tuple[ScanFiles | None, list[str]]:
    """The scan of one DWI series with its bval, bvec and mask, or ``None`` and what is missing."""
    problems = []
    tables = {}
    for extension in (".bval", ".bvec"):
        found = layout.get_nearest(dwi.path, suffix="dwi", extension=extension, all_=False)
        if found is None:
            problems.append(f"no {extension} file for {dwi.path} (beside it or inherited from a higher level)")
        tables[extension] = Path(found) if found is not None else None
    masks = _masks(layout, dwi, subject, session)
    if len(masks) > 1:
        names = ", ".join(Path(m.path).name for m in masks)
        problems.append(f"{len(masks)} brain masks ({names}); keep one (desc-brain is preferred) or none")
    if problems:
        return None, problems
    scan = ScanFiles(subject=subject, session=session, dwi=Path(dwi.path), bvals=tables[".bval"],
                     bvecs=tables[".bvec"], mask=Path(masks[0].path) if masks else None)
    return scan, []


def _masks(layout: Any, dwi: Any, subject: str, session: str | None) -> list:
    """The DWI's masks in the same space: those with ``desc-brain`` if any, else all."""
    entities = dwi.get_entities()
    where = {"subject": subject, **({"session": session} if session is not None else {})}
    if "space" in entities:
        where["space"] = entities["space"]
    masks = layout.get(datatype="dwi", suffix="mask", extension=_NIFTI, **where)
    brain = [m for m in masks if m.get_entities().get("desc") == "brain"]
    return brain or masks
