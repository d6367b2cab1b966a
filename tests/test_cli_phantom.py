"""``varmap phantom`` and ``varmap bench phantom`` through the entry point."""

import json

from varmap.cli import main

CROP = ["--voxel-size", "2", "--crop", "12", "12", "6", "--quiet"]


def test_phantom_command_writes_dataset_and_refuses_existing_folder(tmp_path, capsys):
    out = tmp_path / "phantom"
    assert main(["phantom", "-o", str(out), *CROP]) == 0
    assert {"dwi.nii.gz", "dwi.bval", "dwi.bvec", "mask.nii.gz", "truth"} <= {p.name for p in out.iterdir()}
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["phantom", "-o", str(out), *CROP]) == 2
    assert "--force" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before


def test_bench_phantom_prints_table_and_writes_files(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "phantom", "-o", str(out), "--methods", "nlls", "vae", "--n-epochs", "2", "--no-dipy", *CROP])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| nlls |" in printed and "| vae |" in printed
    assert (out / "results.csv").is_file() and (out / "maps.png").is_file()


def test_bench_phantom_per_voxel_sigma(tmp_path):
    """``--per-voxel-sigma`` leaves each method to estimate σ from its signals, and the record says so."""
    out = tmp_path / "bench"
    assert main(["bench", "phantom", "-o", str(out), "--methods", "nlls", "--no-dipy", "--per-voxel-sigma", *CROP]) == 0
    assert json.loads((out / "phantom_study.json").read_text())["noise_map"] is None
