"""What a result records about how it was made."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np

import varmap
from varmap import provenance
from varmap.estimators.data import valid_voxels
from varmap.io import open_dwi


def test_jsonable_turns_numpy_and_non_finite_values_into_json():
    value = {1: np.float32(0.5), "a": np.arange(3), "b": (np.int64(2), math.nan, np.bool_(True)), "p": Path("x")}
    assert provenance.jsonable(value) == {"1": 0.5, "a": [0, 1, 2], "b": [2, None, True], "p": "x"}
    json.dumps(provenance.jsonable(value), allow_nan=False)


def test_command_line_and_python_call():
    assert provenance.command_line(["fit", "my scan.nii.gz"]) == "varmap fit 'my scan.nii.gz'"
    call = provenance.python_call("fit_image", Path("dwi.nii.gz"), mask=None, seed=3, output_dir=Path("out"))
    assert call == "varmap.fit_image('dwi.nii.gz', seed=3, output_dir='out')"


def test_input_checksums(tmp_path):
    path = tmp_path / "dwi.bval"
    path.write_text("0 1000\n")
    record = provenance.input_checksums({"bvals": path})
    assert record == {"bvals": {"path": str(path.absolute()), "sha256": hashlib.sha256(b"0 1000\n").hexdigest()}}


def test_fit_record(tmp_path, clinical_protocol):
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    path = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 2, 2, clinical_protocol.n_measurements), np.float32), affine), path)
    signals = np.ones((5, clinical_protocol.n_measurements))
    signals[0, 3] = np.nan
    signals[1, clinical_protocol.b0_mask] = 0.0
    timings = {"fit_s": 1.0}
    record = provenance.fit_record(
        kind="fit", command="varmap fit x", config={"seed": 4, "model": "msdki"}, image=open_dwi(path),
        protocol=clinical_protocol, voxels=valid_voxels(signals, clinical_protocol), mask_computed=True,
        units={"D": "µm²/ms"}, history={"train_loss": [np.float32(1.5)]}, timings=timings,
    )
    assert record["varmap_version"] == varmap.__version__ and record["seed"] == 4 and record["kind"] == "fit"
    assert record["config"] == {"seed": 4, "model": "msdki", "torch_threads": record["environment"]["torch_threads"]}
    assert record["voxels"] == {"in_mask": 5, "fitted": 3, "excluded": 2, "excluded_nonfinite": 1,
                                "excluded_nonpositive_b0": 1}
    assert record["image"]["shape"] == [3, 2, 2, 18] and record["image"]["voxel_size_mm"] == [2.0, 2.0, 2.5]
    assert record["protocol"] == {"n_measurements": 18, "n_b0": 2, "shells_s_per_mm2": [1000.0, 2000.0]}
    assert record["timings"] is timings  # later stages add their times
    assert record["history"] == {"train_loss": [1.5]}
    assert {"python", "numpy", "torch", "cpu_count", "cuda"} <= set(record["environment"])
    json.dumps(provenance.jsonable(record), allow_nan=False)
