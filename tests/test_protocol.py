"""Tests of the acquisition description: units, validation, shells, powder averages, I/O round trips."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from varmap.io import InputError
from varmap.protocol import BVALUE_UNITS, Protocol, ProtocolError
from varmap.simulation import fibonacci_sphere




def shell_table(shells_s_mm2=(1000.0, 2000.0), n_dirs=8, n_b0=2) -> tuple[np.ndarray, np.ndarray]:
    """b-values (s/mm²) and (N, 3) directions: ``n_b0`` b=0 rows, then ``n_dirs`` directions per shell."""
    bvals = np.concatenate([np.zeros(n_b0)] + [np.full(n_dirs, b) for b in shells_s_mm2])
    bvecs = np.concatenate([np.zeros((n_b0, 3))] + [fibonacci_sphere(n_dirs)] * len(shells_s_mm2))
    return bvals, bvecs


# ---------------------------------------------------------------------------------------------- units
@pytest.mark.parametrize(
    ("bvals", "expected"),
    [
        ([0.0, 1000.0, 2000.0, 3000.0], [0.0, 1.0, 2.0, 3.0]),  # s/mm²: stored / 1000
        ([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]),  # ms/µm²: kept
        ([0.0, 1e9, 2e9, 3e9], [0.0, 1.0, 2.0, 3.0]),  # s/m²: × 1e-9
    ],
    ids=["s/mm2", "ms/um2", "s/m2"],
)
def test_units_are_detected_and_converted_to_ms_per_um2(bvals, expected):
    p = Protocol.from_bvals_bvecs(bvals, np.eye(4, 3, k=-1))
    np.testing.assert_allclose(p.bvals, expected, rtol=1e-12)
    assert p.bvals.dtype == np.float64


@pytest.mark.parametrize("unit", sorted(BVALUE_UNITS))
def test_explicit_units_override_detection(unit):
    # 60 is ambiguous for "auto" but fine once the unit is given
    bvals = np.array([0.0, 60.0, 60.0, 120.0])
    bvecs = np.concatenate([np.zeros((1, 3)), fibonacci_sphere(3)])
    p = Protocol.from_bvals_bvecs(bvals, bvecs, units=unit, b0_threshold=0.0)
    np.testing.assert_allclose(p.bvals, bvals * BVALUE_UNITS[unit])


def test_explicit_units_beat_a_confident_guess():
    bvals, bvecs = shell_table(shells_s_mm2=(1.0, 2.0))
    p = Protocol.from_bvals_bvecs(bvals * 1000, bvecs, units="ms/um2")  # a deliberate, explicit choice
    np.testing.assert_allclose(p.dw_shell_bvals, [1000.0, 2000.0])


def test_unknown_unit_is_refused_with_the_valid_names():
    bvals, bvecs = shell_table()
    with pytest.raises(ProtocolError, match="s/cm2") as info:
        Protocol.from_bvals_bvecs(bvals, bvecs, units="s/cm2")
    for unit in BVALUE_UNITS:
        assert unit in str(info.value)


@pytest.mark.parametrize("b_max", [60.0, 1e6, 60_000.0, 1e12])
def test_ambiguous_maximum_is_refused_asking_for_units(b_max):
    bvals = np.array([0.0, b_max / 2, b_max, b_max])
    bvecs = np.concatenate([np.zeros((1, 3)), fibonacci_sphere(3)])
    with pytest.raises(ProtocolError, match="unit") as info:
        Protocol.from_bvals_bvecs(bvals, bvecs)
    assert "units=" in str(info.value)
    assert f"{b_max:g}" in str(info.value)


@pytest.mark.parametrize(
    ("b_max", "hint"),
    [(3.0, "look like ms/µm².*multiply them by 1000"), (3e9, "look like s/m².*divide them by 10⁶"),
     (60.0, "check the bvals file"), (2e5, "check the bvals file")],
)
def test_implausible_bvalues_in_s_per_mm2_are_refused_naming_the_unit(b_max, hint):
    bvals = np.array([0.0, b_max / 2, b_max, b_max])
    bvecs = np.concatenate([np.zeros((1, 3)), fibonacci_sphere(3)])
    largest = re.escape(f"{b_max:g}")
    with pytest.raises(ProtocolError, match=f"should be in s/mm².*largest is {largest}.*100-50000 s/mm².*{hint}"):
        Protocol.from_bvals_bvecs(bvals, bvecs, units="s/mm2")
    Protocol.from_bvals_bvecs(bvals * 1000 / b_max, bvecs, units="s/mm2")  # b_max 1000 s/mm² is fine
    Protocol.from_bvals_bvecs(np.zeros(3), np.zeros((3, 3)), units="s/mm2")  # b=0 only: no unit to check


def test_all_zero_bvals_need_no_unit():
    p = Protocol.from_bvals_bvecs(np.zeros(3), np.zeros((3, 3)))
    assert p.n_b0 == 3
    assert p.dw_shell_bvals.size == 0


def test_protocol_error_is_a_value_error():
    assert issubclass(ProtocolError, ValueError)


# ----------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("bad", "match"),
    [(-1000.0, "negative"), (np.nan, "NaN"), (np.inf, "Inf")],
    ids=["negative", "nan", "inf"],
)
def test_invalid_bvals_are_refused(bad, match):
    bvals, bvecs = shell_table()
    bvals[3] = bad
    with pytest.raises(ProtocolError, match=match):
        Protocol.from_bvals_bvecs(bvals, bvecs)


def test_two_dimensional_bvals_are_refused():
    with pytest.raises(ProtocolError, match="one row"):
        Protocol.from_bvals_bvecs(np.zeros((2, 3)), np.zeros((6, 3)))


def test_column_bvals_are_accepted():
    bvals, bvecs = shell_table()
    assert Protocol.from_bvals_bvecs(bvals[:, None], bvecs) == Protocol.from_bvals_bvecs(bvals, bvecs)


def test_non_finite_bvecs_of_weighted_measurements_are_refused():
    bvals, bvecs = shell_table()
    assert bvals[4] > 0
    bvecs[4, 1] = np.nan
    with pytest.raises(ProtocolError, match="bvecs contains NaN or Inf for 1 diffusion-weighted.*measurement 4"):
        Protocol.from_bvals_bvecs(bvals, bvecs)


def test_nan_bvecs_of_b0_measurements_mean_no_direction():
    """dipy's small_64D.bvec (and some converters' files) give the b=0 volume the direction NaN NaN NaN;
    dipy reads it as no direction, and so does varmap."""
    bvals, bvecs = shell_table()
    b0 = int(np.flatnonzero(bvals == 0)[0])
    with_nan = bvecs.copy()
    with_nan[b0] = np.nan
    protocol = Protocol.from_bvals_bvecs(bvals, with_nan)
    np.testing.assert_array_equal(protocol.bvecs[b0], 0.0)
    assert protocol == Protocol.from_bvals_bvecs(bvals, np.where(np.isnan(with_nan), 0.0, with_nan))


def test_bvecs_rows_and_columns_give_the_same_protocol():
    bvals, bvecs = shell_table()
    rows = Protocol.from_bvals_bvecs(bvals, bvecs)
    columns = Protocol.from_bvals_bvecs(bvals, bvecs.T)
    assert rows == columns
    np.testing.assert_array_equal(rows.bvecs, columns.bvecs)
    assert columns.bvecs.shape == (bvals.size, 3)


@pytest.mark.parametrize("shape", [(18, 2), (17, 3), (3, 17), (18,), (18, 3, 1)])
def test_wrong_bvecs_shape_names_the_expected_shapes(shape):
    bvals, _ = shell_table()  # 18 measurements
    with pytest.raises(ProtocolError) as info:
        Protocol.from_bvals_bvecs(bvals, np.ones(shape))
    message = str(info.value)
    assert "(18, 3)" in message and "(3, 18)" in message
    assert str(shape) in message


def test_slightly_non_unit_direction_is_renormalised():
    bvals, bvecs = shell_table()
    bvecs[5] *= 1.05
    p = Protocol.from_bvals_bvecs(bvals, bvecs)
    np.testing.assert_allclose(np.linalg.norm(p.bvecs[~p.b0_mask], axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(p.bvecs[5], bvecs[5] / 1.05, rtol=1e-12)


@pytest.mark.parametrize("scale", [1.5, 0.5])
def test_far_from_unit_direction_is_refused_naming_the_measurement(scale):
    bvals, bvecs = shell_table()
    bvecs[7] *= scale
    with pytest.raises(ProtocolError, match=r"measurement 7\b") as info:
        Protocol.from_bvals_bvecs(bvals, bvecs)
    assert f"{scale:.3f}" in str(info.value)


def test_weighted_measurement_without_direction_is_named_as_a_trace_image():
    """A b > 0 volume with bvec 0 0 0 is a scanner's isotropic (trace) image, not a typo in a direction."""
    bvals, bvecs = shell_table()
    bvecs[9] = 0.0
    with pytest.raises(ProtocolError, match=r"measurement 9 has b = .*trace.*remove that volume"):
        Protocol.from_bvals_bvecs(bvals, bvecs)


def test_norm_tolerance_is_adjustable():
    bvals, bvecs = shell_table()
    bvecs[7] *= 1.05
    with pytest.raises(ProtocolError, match="measurement 7"):
        Protocol.from_bvals_bvecs(bvals, bvecs, norm_tolerance=0.01)


def test_b0_rows_are_zeroed_whatever_their_direction():
    bvals, bvecs = shell_table()
    bvals[1] = 5.0
    bvecs[0] = [0.3, 7.0, -2.0]  # not a unit vector, but b=0: accepted
    bvecs[1] = [1.0, 0.0, 0.0]
    p = Protocol.from_bvals_bvecs(bvals, bvecs)
    np.testing.assert_array_equal(p.bvecs[:2], 0.0)
    np.testing.assert_array_equal(p.b0_mask, bvals <= 50)


def test_echo_times_are_kept_and_checked():
    bvals, bvecs = shell_table()
    te = np.linspace(60.0, 90.0, bvals.size)
    p = Protocol.from_bvals_bvecs(bvals, bvecs, echo_times=te)
    np.testing.assert_array_equal(p.echo_times, te)
    with pytest.raises(ProtocolError, match="echo_times"):
        Protocol.from_bvals_bvecs(bvals, bvecs, echo_times=te[:-1])


def test_constructor_checks_shapes():
    with pytest.raises(ProtocolError, match=r"\(N, 3\)"):
        Protocol(bvals=np.zeros(4), bvecs=np.zeros((3, 4)))


# --------------------------------------------------------------------------------------------- shells
def test_nearby_bvalues_form_one_shell_and_small_b_counts_as_b0():
    bvals = np.array([0.0, 5.0, 995.0, 1005.0, 2000.0, 2000.0, 1000.0])
    bvecs = np.concatenate([np.zeros((2, 3)), fibonacci_sphere(5)])
    p = Protocol.from_bvals_bvecs(bvals, bvecs)
    assert p.n_measurements == 7
    assert p.n_b0 == 2
    np.testing.assert_array_equal(p.b0_mask, [True, True, False, False, False, False, False])
    np.testing.assert_allclose(p.shell_bvals, [0.0, 1.0, 2.0])
    np.testing.assert_allclose(p.dw_shell_bvals, [1.0, 2.0])
    np.testing.assert_array_equal(p.shell_index, [0, 0, 1, 1, 2, 2, 1])
    np.testing.assert_array_equal(p.shell_counts, [2, 3, 2])
    assert p.shell_counts.sum() == p.n_measurements
    # the b=5 measurement keeps its b-value; only its shell is b=0
    assert p.bvals[1] == pytest.approx(0.005)


def test_shells_are_sorted_whatever_the_measurement_order():
    bvals = np.array([3000.0, 0.0, 1000.0, 2000.0, 1000.0, 3000.0, 2000.0])
    bvecs = np.where(bvals[:, None] > 0, np.tile([0.0, 0.0, 1.0], (7, 1)), 0.0)
    p = Protocol.from_bvals_bvecs(bvals, bvecs)
    np.testing.assert_allclose(p.shell_bvals, [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(p.shell_index, [3, 0, 1, 2, 1, 3, 2])
    np.testing.assert_allclose(p.shell_bvals[p.shell_index], p.bvals, atol=1e-12)


def test_protocol_without_b0_has_only_weighted_shells():
    bvals, bvecs = shell_table(n_b0=0)
    p = Protocol.from_bvals_bvecs(bvals, bvecs)
    assert p.n_b0 == 0
    np.testing.assert_allclose(p.shell_bvals, [1.0, 2.0])
    np.testing.assert_array_equal(p.dw_shell_bvals, p.shell_bvals)
    np.testing.assert_array_equal(np.unique(p.shell_index), [0, 1])


def test_shell_tolerance_separates_distinct_shells():
    bvals = np.array([0.0, 700.0, 700.0, 1000.0, 1000.0])
    bvecs = np.concatenate([np.zeros((1, 3)), fibonacci_sphere(4)])
    assert Protocol.from_bvals_bvecs(bvals, bvecs).dw_shell_bvals.size == 2
    merged = Protocol.from_bvals_bvecs(bvals, bvecs, shell_tolerance=400.0)
    np.testing.assert_allclose(merged.dw_shell_bvals, [0.85])


def test_b0_threshold_is_in_s_per_mm2_whatever_the_units():
    bvals = np.array([0.0, 0.02, 1.0, 1.0, 2.0, 2.0])  # ms/µm²: b=20 s/mm² is b=0 by default
    bvecs = np.concatenate([np.zeros((1, 3)), fibonacci_sphere(5)])
    assert Protocol.from_bvals_bvecs(bvals, bvecs).n_b0 == 2
    assert Protocol.from_bvals_bvecs(bvals, bvecs, b0_threshold=10.0).n_b0 == 1


# ------------------------------------------------------------------------------------ powder average
def test_powder_average_equals_per_shell_means():
    bvals = np.array([0.0, 5.0, 995.0, 1005.0, 2000.0, 2000.0, 1000.0, 2000.0])
    bvecs = np.concatenate([np.zeros((2, 3)), fibonacci_sphere(6)])
    p = Protocol.from_bvals_bvecs(bvals, bvecs)
    signals = np.random.default_rng(0).uniform(0.1, 1.0, size=(4, 3, bvals.size))
    expected = np.stack(
        [
            signals[..., [0, 1]].mean(-1),
            signals[..., [2, 3, 6]].mean(-1),
            signals[..., [4, 5, 7]].mean(-1),
        ],
        axis=-1,
    )
    averaged = p.powder_average(signals)
    assert averaged.shape == (4, 3, 3)
    np.testing.assert_allclose(averaged, expected, rtol=1e-12)
    # a single voxel works too
    np.testing.assert_allclose(p.powder_average(signals[0, 0]), expected[0, 0], rtol=1e-12)


def test_powder_average_keeps_float32_and_accepts_integer_signals(clinical_protocol):
    signals = np.arange(2 * clinical_protocol.n_measurements).reshape(2, -1)
    manual = np.stack(
        [signals[:, clinical_protocol.shell_index == s].mean(-1) for s in range(clinical_protocol.shell_bvals.size)], -1
    )
    np.testing.assert_allclose(clinical_protocol.powder_average(signals), manual, rtol=1e-12)
    out32 = clinical_protocol.powder_average(signals.astype(np.float32))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, manual, rtol=1e-6)


@pytest.mark.parametrize("length", [17, 19, 1])
def test_powder_average_refuses_wrong_last_axis(clinical_protocol, length):
    with pytest.raises(ProtocolError, match="18"):
        clinical_protocol.powder_average(np.ones((2, length)))
    with pytest.raises(ProtocolError):
        clinical_protocol.powder_average(np.ones((clinical_protocol.n_measurements, 2)))  # measurements on the wrong axis


# ------------------------------------------------------------------------------------- immutability
def test_attributes_cannot_be_reassigned(clinical_protocol):
    for name in ("bvals", "bvecs", "b0_threshold", "shell_index", "shell_bvals", "echo_times"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(clinical_protocol, name, None)


def test_arrays_are_read_only():
    bvals, bvecs = shell_table()
    p = Protocol.from_bvals_bvecs(bvals, bvecs, echo_times=np.full(bvals.size, 80.0))
    for array in (p.bvals, p.bvecs, p.shell_index, p.shell_bvals, p.echo_times):
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array[0] = 1


def test_protocol_does_not_alias_the_input_arrays():
    bvals, bvecs = shell_table(shells_s_mm2=(1.0, 2.0))  # already ms/µm²: no conversion copy
    p = Protocol.from_bvals_bvecs(bvals, bvecs)
    before = p.bvals.copy(), p.bvecs.copy()
    bvals[:] = 7.0
    bvecs[:] = 7.0
    np.testing.assert_array_equal(p.bvals, before[0])
    np.testing.assert_array_equal(p.bvecs, before[1])


# -------------------------------------------------------------------------------------------- FSL I/O
def write_fsl(folder, bvals, bvecs_rows):
    bvals_path, bvecs_path = folder / "dwi.bval", folder / "dwi.bvec"
    np.savetxt(bvals_path, bvals[None], fmt="%g")
    np.savetxt(bvecs_path, bvecs_rows, fmt="%.10f")
    return bvals_path, bvecs_path


@pytest.mark.parametrize("orientation", ["fsl (3, N)", "rows (N, 3)"])
def test_from_fsl_round_trip(tmp_path, orientation):
    bvals, bvecs = shell_table()
    bvals[1] = 5.0
    rows = bvecs.T if orientation.startswith("fsl") else bvecs
    paths = write_fsl(tmp_path, bvals, rows)
    p = Protocol.from_fsl(*paths)
    assert p == Protocol.from_bvals_bvecs(bvals, bvecs)
    np.testing.assert_allclose(p.bvals, bvals / 1000)
    np.testing.assert_allclose(p.bvecs, np.where(bvals[:, None] > 50, bvecs, 0.0), atol=1e-9)
    # str paths and keyword arguments work too
    assert Protocol.from_fsl(str(paths[0]), str(paths[1]), units="s/mm2") == p
    # with a lower b=0 threshold, the b=5 measurement is diffusion-weighted and needs a direction
    with pytest.raises(ProtocolError, match="measurement 1 .*raise b0_threshold"):
        Protocol.from_fsl(*paths, b0_threshold=1.0)


def test_from_fsl_missing_file_names_the_path(tmp_path):
    bvals, bvecs = shell_table()
    bvals_path, bvecs_path = write_fsl(tmp_path, bvals, bvecs.T)
    missing = tmp_path / "nope.bvec"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        Protocol.from_fsl(bvals_path, missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.bval"))):
        Protocol.from_fsl(tmp_path / "nope.bval", bvecs_path)
    with pytest.raises(FileNotFoundError):  # a folder is not a file
        Protocol.from_fsl(tmp_path, bvecs_path)


def test_from_fsl_garbage_file_is_an_input_error_naming_it(tmp_path):
    bvals, bvecs = shell_table()
    bvals_path, bvecs_path = write_fsl(tmp_path, bvals, bvecs.T)
    bvals_path.write_text("0 1000 two thousand\n")
    with pytest.raises(InputError, match=re.escape(f"bvals file {bvals_path} is not a table of numbers")):
        Protocol.from_fsl(bvals_path, bvecs_path)


def test_from_fsl_inconsistent_files_name_both(tmp_path):
    bvals, bvecs = shell_table()
    bvals_path, bvecs_path = write_fsl(tmp_path, bvals, bvecs.T[:, :-1])
    with pytest.raises(InputError) as info:
        Protocol.from_fsl(bvals_path, bvecs_path)
    message = str(info.value)
    assert str(bvals_path) in message and str(bvecs_path) in message
    assert "3x17 table" in message and "3 rows of 18 values" in message


def test_from_fsl_protocol_errors_name_both_files(tmp_path):
    bvals, bvecs = shell_table()
    bvecs[-1] *= 2.0  # not a unit vector
    bvals_path, bvecs_path = write_fsl(tmp_path, bvals, bvecs.T)
    with pytest.raises(ProtocolError, match=re.escape(f"{bvals_path} / {bvecs_path}: ") + ".*not unit vectors"):
        Protocol.from_fsl(bvals_path, bvecs_path)


# ---------------------------------------------------------------------------------- dict & equality
def test_to_dict_from_dict_round_trip_through_json():
    bvals, bvecs = shell_table(shells_s_mm2=(995.0, 2000.0))
    bvals[1] = 5.0
    te = np.linspace(60.0, 90.0, bvals.size)
    p = Protocol.from_bvals_bvecs(bvals, bvecs, echo_times=te, b0_threshold=20.0, shell_tolerance=50.0)
    data = json.loads(json.dumps(p.to_dict()))
    np.testing.assert_allclose(data["bvals_s_per_mm2"], bvals)
    q = Protocol.from_dict(data)
    assert q == p
    np.testing.assert_allclose(q.bvals, p.bvals, rtol=1e-12)
    np.testing.assert_allclose(q.bvecs, p.bvecs, atol=1e-8)
    np.testing.assert_allclose(q.echo_times, te)
    assert q.b0_threshold == pytest.approx(p.b0_threshold)
    assert q.shell_tolerance == pytest.approx(p.shell_tolerance)
    np.testing.assert_array_equal(q.shell_index, p.shell_index)


def test_to_dict_without_echo_times(clinical_protocol):
    data = clinical_protocol.to_dict()
    assert data["echo_times_ms"] is None
    assert Protocol.from_dict(data).echo_times is None


def test_equality_and_hash():
    bvals, bvecs = shell_table()
    p = Protocol.from_bvals_bvecs(bvals, bvecs)
    same = Protocol.from_bvals_bvecs(bvals / 1000, bvecs.T)  # other units, other orientation
    assert p == same and hash(p) == hash(same)
    assert len({p, same}) == 1

    other_b = bvals.copy()
    other_b[-1] = 2500.0
    assert p != Protocol.from_bvals_bvecs(other_b, bvecs)
    assert p != Protocol.from_bvals_bvecs(bvals, bvecs[:, [1, 0, 2]])
    assert p != Protocol.from_bvals_bvecs(bvals[:-1], bvecs[:-1])
    assert p != Protocol.from_bvals_bvecs(bvals, bvecs, echo_times=np.full(bvals.size, 80.0))
    assert p != "not a protocol"


def test_repr_lists_shells_in_s_per_mm2(clinical_protocol):
    text = repr(clinical_protocol)
    assert "18 measurements" in text and "2 b=0" in text
    assert "1000, 2000" in text
