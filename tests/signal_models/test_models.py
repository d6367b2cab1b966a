"""Tests of the physics forward models: registry, protocol checks, closed forms, dipy, shared battery."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from varmap.protocol import Protocol, ProtocolError
from varmap.signal_models import (
    SIGNAL_MODELS,
    BallStickModel,
    MSDKIModel,
    SignalModel,
    ball_stick_signal,
    get_signal_model,
    msdki_signal,
)
from varmap.simulation import fibonacci_sphere, hcp_protocol

MODEL_NAMES = sorted(SIGNAL_MODELS)


def in_s_mm2(protocol: Protocol, bvals_s_mm2: np.ndarray | None = None, rows=slice(None)) -> Protocol:
    """``protocol`` (its ``rows``), optionally with other b-values in s/mm²."""
    bvals = protocol.bvals * 1000.0 if bvals_s_mm2 is None else bvals_s_mm2
    return Protocol.from_bvals_bvecs(bvals[rows], protocol.bvecs[rows], units="s/mm2")


@pytest.fixture(scope="module")
def multishell(hcp_small_protocol) -> Protocol:
    """The shared HCP-like protocol with its second b=0 image at b = 5 s/mm², as scanners often write it."""
    bvals = hcp_small_protocol.bvals * 1000.0
    bvals[np.flatnonzero(hcp_small_protocol.b0_mask)[1]] = 5.0
    return in_s_mm2(hcp_small_protocol, bvals)


@pytest.fixture(params=MODEL_NAMES)
def model(request, multishell) -> SignalModel:
    return get_signal_model(request.param, multishell)


def unconstrained_sample(model: SignalModel, shape, *, scale=1.5, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, model.n_packed, generator=generator, dtype=dtype)


def named_params(model: SignalModel, batch=(3,), seed=1) -> dict[str, np.ndarray]:
    """Parameters drawn inside every parameter's middle 80 %, unit directions."""
    rng = np.random.default_rng(seed)
    params = {
        p.name: p.low + (p.high - p.low) * rng.uniform(0.1, 0.9, size=batch) for p in model.parameters
    }
    if model.has_direction:
        n = rng.normal(size=batch + (3,))
        params["n"] = n / np.linalg.norm(n, axis=-1, keepdims=True)
    return params


# ----------------------------------------------------------------------------------------- registry
def test_registry_names_match_classes():
    assert SIGNAL_MODELS["msdki"] is MSDKIModel
    assert SIGNAL_MODELS["ball_stick"] is BallStickModel
    for name, cls in SIGNAL_MODELS.items():
        assert cls.name == name
        assert issubclass(cls, SignalModel)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_get_signal_model_builds_the_registered_class(name, multishell):
    built = get_signal_model(name, multishell)
    assert type(built) is SIGNAL_MODELS[name]
    assert built.protocol is multishell
    assert repr(built) == f"{type(built).__name__}({multishell!r})"


def test_unknown_model_name_lists_valid_names(multishell):
    with pytest.raises(ValueError, match="dti") as info:
        get_signal_model("dti", multishell)
    for name in SIGNAL_MODELS:
        assert repr(name) in str(info.value)


# ------------------------------------------------------------------------------- protocol checking
def test_msdki_kurtosis_range_is_dipys():
    import inspect

    from dipy.reconst.dki import mean_kurtosis

    K = {p.name: p for p in MSDKIModel.parameters}["K"]
    assert K.low == pytest.approx(inspect.signature(mean_kurtosis).parameters["min_kurtosis"].default)
    assert K.high == inspect.signature(mean_kurtosis).parameters["max_kurtosis"].default == 3
    # negative K inside the range is a valid, finite signal that decays faster than mono-exponential
    signal = msdki_signal(torch.tensor([1.0, 2.0]), torch.tensor(3.0), torch.tensor(-0.3))
    assert torch.all(signal < torch.exp(-torch.tensor([3.0, 6.0])))


def test_msdki_refuses_a_single_shell():
    single = hcp_protocol(n_b0=2, n_directions=30, shells=(1000.0,))
    with pytest.raises(ProtocolError, match="at least two non-zero shells"):
        MSDKIModel(single)
    # 995 and 1005 are one shell too
    near = hcp_protocol(n_b0=2, n_directions=15, shells=(995.0, 1005.0))
    with pytest.raises(ProtocolError, match="at least two non-zero shells"):
        MSDKIModel(near)
    MSDKIModel(hcp_protocol(n_b0=2, n_directions=3, shells=(1000.0, 2000.0)))  # two shells suffice


@pytest.mark.parametrize("name, enough", [("msdki", 3), ("ball_stick", 2)])
def test_without_b0_a_model_needs_one_more_shell_for_S0(name, enough):
    """Without b=0, S0 is one more unknown: MS-DKI's three (S0, D, K) need three shell means, and
    ball-and-stick needs two shells to tell S0 from the ball's decay."""
    shells = (1000.0, 2000.0, 3000.0)[:enough]
    full = hcp_protocol(n_b0=2, n_directions=10, shells=shells, seed=0)
    get_signal_model(name, in_s_mm2(full, rows=~full.b0_mask))  # accepted
    short = hcp_protocol(n_b0=2, n_directions=10, shells=shells[:-1], seed=0)
    with pytest.raises(ProtocolError, match=f"without a b=0 measurement needs at least {enough}") as info:
        get_signal_model(name, in_s_mm2(short, rows=~short.b0_mask))
    assert name in str(info.value)
    assert "1000 s/mm²" in str(info.value)  # smallest b-value, in s/mm²


def test_ball_stick_needs_six_weighted_measurements():
    five = hcp_protocol(n_b0=2, n_directions=5, shells=(1000.0,))
    with pytest.raises(ProtocolError, match="at least 6") as info:
        BallStickModel(five)
    assert "has 5" in str(info.value)
    BallStickModel(hcp_protocol(n_b0=2, n_directions=6, shells=(1000.0,)))


# ------------------------------------------------------------------------------------ closed forms
def test_msdki_signal_matches_closed_form():
    """The one independent check of msdki_signal: exp(-b D + b² D² K / 6) worked out by hand."""
    bvals = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    D = torch.tensor([1.0, 1.5, 3.0], dtype=torch.float64)
    K = torch.tensor([1.0, 0.9, 0.0], dtype=torch.float64)
    expected = [
        [1.0, math.exp(-1 + 1 / 6), math.exp(-2 + 4 / 6), math.exp(-3 + 9 / 6)],
        [1.0, math.exp(-1.5 + 2.25 * 0.9 / 6), math.exp(-1.65), math.exp(-4.5 + 20.25 * 0.9 / 6)],
        [1.0, math.exp(-3.0), math.exp(-6.0), math.exp(-9.0)],
    ]
    out = msdki_signal(bvals, D, K)
    assert out.shape == (3, 4)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_msdki_signal_broadcasts_batch_dimensions():
    bvals = torch.tensor([0.0, 1.0, 2.0])
    D = torch.full((2, 5), 1.2)
    K = torch.full((2, 5), 0.8)
    out = msdki_signal(bvals, D, K)
    assert out.shape == (2, 5, 3)
    torch.testing.assert_close(out[1, 4], msdki_signal(bvals, D[0, :1], K[0, :1])[0])


def _ball_stick(bvals, bvecs, f, d_par, d_iso, n):
    t = lambda x: torch.tensor(np.array(x, dtype=np.float64))  # noqa: E731
    return ball_stick_signal(t(bvals), t(bvecs), t(f), t(d_par), t(d_iso), t(n)).numpy()


def test_ball_stick_signal_matches_closed_form(hcp_small_protocol):
    """The one independent check of ball_stick_signal: f exp(-b d_par (g·n)²) + (1 - f) exp(-b d_iso).

    The cases include a pure stick (f = 1), a pure ball (f = 0), and gradients along and across the
    fibre, where the stick term is exp(-b d_par) and 1.
    """
    p = hcp_small_protocol
    last = p.bvecs[-1]  # the last measurement's gradient: along the 4th fibre, across the 5th
    across = np.cross(last, [1.0, 0.0, 0.0] if abs(last[0]) < 0.9 else [0.0, 0.0, 1.0])
    n = np.stack([[0.0, 0.6, 0.8], [0.0, 0.6, 0.8], [0.48, -0.6, 0.64], last, across / np.linalg.norm(across)])
    f = np.array([1.0, 0.0, 0.3, 0.55, 0.35])
    d_par = np.array([1.7, 1.7, 2.0, 2.2, 2.2])
    d_iso = np.array([2.5, 2.5, 0.9, 1.4, 1.4])
    cosine = n @ p.bvecs.T
    expected = f[:, None] * np.exp(-p.bvals * d_par[:, None] * cosine**2) + (1 - f[:, None]) * np.exp(
        -p.bvals * d_iso[:, None]
    )
    np.testing.assert_allclose(_ball_stick(p.bvals, p.bvecs, f, d_par, d_iso, n), expected, rtol=1e-12)
    # the special cases, so that a wrong formula above cannot hide them
    b_last, (along, perpendicular) = p.bvals[-1], expected[3:, -1]
    assert along == pytest.approx(0.55 * math.exp(-b_last * 2.2) + 0.45 * math.exp(-b_last * 1.4), rel=1e-12)
    assert perpendicular == pytest.approx(0.35 + 0.65 * math.exp(-b_last * 1.4), rel=1e-12)


def test_ball_stick_antipodal_symmetry(multishell):
    p = multishell
    n = np.array([[0.48, -0.6, 0.64], [1.0, 0.0, 0.0]])
    f, d_par, d_iso = np.array([0.6, 0.2]), np.array([2.0, 1.1]), np.array([0.9, 3.0])
    np.testing.assert_allclose(
        _ball_stick(p.bvals, p.bvecs, f, d_par, d_iso, n),
        _ball_stick(p.bvals, p.bvecs, f, d_par, d_iso, -n),
        rtol=1e-14,
    )


# ------------------------------------------------------------------------------------------- dipy
@pytest.fixture(scope="module")
def dipy_case():
    gradients = pytest.importorskip("dipy.core.gradients")
    msdki = pytest.importorskip("dipy.reconst.msdki")
    # b=5 counts as b=0 and 995/1005 form one shell, for dipy (rounding) and varmap (tolerance) alike
    bvals = np.concatenate(
        [[0.0, 5.0, 0.0], np.full(8, 995.0), np.full(8, 1005.0), np.full(16, 2000.0), np.full(16, 3000.0)]
    )
    bvecs = np.concatenate([np.zeros((3, 3))] + [fibonacci_sphere(16)] * 3)
    gtab = gradients.gradient_table(bvals, bvecs=bvecs)
    protocol = Protocol.from_bvals_bvecs(bvals, bvecs)
    return msdki, gtab, protocol


def test_msdki_predict_matches_dipy(dipy_case):
    msdki, gtab, protocol = dipy_case
    model = MSDKIModel(protocol)
    D = np.array([[0.8, 1.0, 1.5], [3.0, 0.3, 2.2]])  # µm²/ms
    K = np.array([[1.25, 0.0, 1.0], [0.0, 2.5, 0.4]])
    S0 = np.array([[100.0, 250.0, 1.0], [37.5, 1000.0, 2.0]])
    ours = model.predict({"D": D, "K": K}, S0=S0)
    # dipy: b in s/mm², D in mm²/s = µm²/ms × 1e-3
    theirs = msdki.msdki_prediction(np.stack([D * 1e-3, K], axis=-1), gtab, S0=S0)
    assert ours.shape == theirs.shape == (2, 3, protocol.n_measurements)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    # the observables are dipy's per-shell prediction
    observables = model.forward(torch.as_tensor(model.pack({"D": D, "K": K}))).numpy()
    mean_theirs, _ = msdki.mean_signal_bvalue(theirs / S0[..., None], gtab)
    np.testing.assert_allclose(observables, mean_theirs, rtol=1e-10)


def test_powder_average_matches_dipy_mean_signal(dipy_case):
    msdki, gtab, protocol = dipy_case
    signals = np.random.default_rng(0).uniform(0.0, 2.0, size=(2, 4, protocol.n_measurements))
    expected, counts = msdki.mean_signal_bvalue(signals, gtab)
    np.testing.assert_allclose(protocol.powder_average(signals), expected, rtol=1e-12)
    np.testing.assert_array_equal(protocol.shell_counts, counts)
    np.testing.assert_allclose(protocol.shell_bvals * 1000, [0.0, 1000.0, 2000.0, 3000.0])


# -------------------------------------------------------------------------- shared model battery
def test_declared_parameters_are_consistent(model):
    assert len(model.parameter_names) == model.n_scalars == len(set(model.parameter_names))
    assert model.n_packed == model.n_scalars + 3 * model.has_direction
    for p in model.parameters:
        assert p.low < p.high
        assert p.unit and p.description
    units = model.units()
    assert list(units)[: model.n_scalars] == list(model.parameter_names)
    assert ("n" in units) == model.has_direction
    counts = model.observation_counts
    assert counts.shape == (model.n_observables,)
    assert counts.sum() == model.protocol.n_measurements


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
def test_forward_shapes(model, batch):
    packed = model.constrain(unconstrained_sample(model, batch))
    assert packed.shape == batch + (model.n_packed,)
    assert model.forward(packed).shape == batch + (model.n_observables,)
    assert model.measurement_forward(packed).shape == batch + (model.protocol.n_measurements,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_input(model, dtype):
    u = unconstrained_sample(model, (4,), dtype=dtype)
    packed = model.constrain(u)
    assert packed.dtype == dtype
    assert model.forward(packed).dtype == dtype
    assert model.measurement_forward(packed).dtype == dtype
    assert model.unconstrain(packed).dtype == dtype


def test_float32_and_float64_agree(model):
    u = unconstrained_sample(model, (256,), seed=3)
    out64 = model.forward(model.constrain(u))
    out32 = model.forward(model.constrain(u.float())).double()
    # Where the signal is physical (it decays: every normalised observable <= 1) they agree to 1e-5.
    physical = (out64 <= 1.0).all(dim=-1)
    assert physical.sum() >= 32
    torch.testing.assert_close(out32[physical], out64[physical], rtol=1e-5, atol=1e-5)
    meas64 = model.measurement_forward(model.constrain(u))
    meas32 = model.measurement_forward(model.constrain(u.float())).double()
    torch.testing.assert_close(meas32[physical], meas64[physical], rtol=1e-5, atol=1e-5)
    # Inside the bounds but beyond MS-DKI's turning point the signal grows like exp(b²D²K/6) (up to
    # ~1e26), and float32 rounding of the exponent costs relative accuracy: agreement to 1e-4 there.
    torch.testing.assert_close(out32, out64, rtol=1e-4, atol=0)


def test_observables_of_predicted_measurements_are_the_forward_output(model):
    packed = model.constrain(unconstrained_sample(model, (6,), seed=4))
    measurements = model.measurement_forward(packed).numpy()
    np.testing.assert_allclose(model.observables(measurements), model.forward(packed).numpy(), rtol=1e-12)


def test_gradients_through_constrain_are_correct(model):
    u = unconstrained_sample(model, (3,), scale=1.0, seed=5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: model.forward(model.constrain(x)), (u,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_are_finite_even_for_extreme_inputs(model, dtype):
    u = unconstrained_sample(model, (16,), scale=20.0, seed=6, dtype=dtype)
    u[0] = 50.0
    u[1] = -50.0
    u.requires_grad_(True)
    model.forward(model.constrain(u)).sum().backward()
    assert torch.isfinite(u.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constrain_stays_strictly_inside_bounds(model, dtype):
    extreme = torch.tensor([-50.0, 50.0], dtype=dtype)
    grid = torch.cartesian_prod(*[extreme] * model.n_packed)  # every corner of the ±50 box
    random = unconstrained_sample(model, (32,), scale=30.0, seed=7, dtype=dtype)
    packed = model.constrain(torch.cat([grid, random]))
    assert torch.isfinite(packed).all()
    for i, p in enumerate(model.parameters):
        assert (packed[:, i] > p.low).all(), f"{p.name} reaches its lower bound {p.low}"
        assert (packed[:, i] < p.high).all(), f"{p.name} reaches its upper bound {p.high}"
    assert torch.isfinite(model.forward(packed)).all()


def test_constrain_has_nonzero_gradient_for_moderate_inputs(model):
    u = unconstrained_sample(model, (16,), scale=2.0, seed=8, dtype=torch.float32).clamp(-5, 5)
    u.requires_grad_(True)
    packed = model.constrain(u)
    for i, p in enumerate(model.parameters):
        (grad,) = torch.autograd.grad(packed[:, i].sum(), u, retain_graph=True)
        assert (grad[:, i] > 0).all(), f"{p.name} has a vanishing gradient"


def test_directions_are_unit_vectors(model):
    if not model.has_direction:
        pytest.skip(f"{model.name} has no direction")
    u = unconstrained_sample(model, (32,), scale=10.0, seed=9)
    u[0, -3:] = torch.tensor([1e-3, -2e-3, 5e-4], dtype=u.dtype)  # short and long raw vectors alike
    u[1, -3:] = torch.tensor([50.0, -50.0, 50.0], dtype=u.dtype)
    n = model.constrain(u)[:, model.n_scalars :]
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(32, dtype=u.dtype))
    torch.testing.assert_close(n, u[:, -3:] / u[:, -3:].norm(dim=-1, keepdim=True))


def test_unconstrain_inverts_constrain(model):
    u = unconstrained_sample(model, (20,), scale=2.0, seed=10).clamp(-6.0, 6.0)
    back = model.unconstrain(model.constrain(u))
    assert back.shape == u.shape
    torch.testing.assert_close(back[:, : model.n_scalars], u[:, : model.n_scalars], rtol=1e-8, atol=1e-8)
    if model.has_direction:
        direction = u[:, model.n_scalars :]
        unit = direction / direction.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(back[:, model.n_scalars :], unit)
    # and constrain inverts unconstrain on physical values, bounds pulled just inside
    packed = torch.as_tensor(model.pack(named_params(model, batch=(7,))))
    torch.testing.assert_close(model.constrain(model.unconstrain(packed)), packed, rtol=1e-8, atol=1e-8)
    at_bounds = packed.clone()
    at_bounds[0, : model.n_scalars] = torch.tensor([p.low for p in model.parameters], dtype=packed.dtype)
    at_bounds[1, : model.n_scalars] = torch.tensor([p.high for p in model.parameters], dtype=packed.dtype)
    assert torch.isfinite(model.unconstrain(at_bounds)).all()


def test_pack_unpack_round_trip(model):
    params = named_params(model, batch=(2, 4))
    packed = model.pack(params)
    assert packed.shape == (2, 4, model.n_packed)
    assert packed.dtype == np.float64
    unpacked = model.unpack(packed)
    assert set(unpacked) == set(params)
    for name, value in params.items():
        np.testing.assert_array_equal(unpacked[name], value)
    np.testing.assert_array_equal(model.pack(unpacked), packed)


def test_pack_names_missing_parameters(model):
    params = named_params(model)
    first = model.parameter_names[0]
    del params[first]
    with pytest.raises(KeyError, match=first):
        model.pack(params)


def test_predict_scales_with_S0(model):
    params = named_params(model, batch=(2, 3))
    unit = model.predict(params)
    assert unit.shape == (2, 3, model.protocol.n_measurements)
    assert unit.dtype == np.float64
    S0 = np.array([[1.0, 200.0, 3.5], [1000.0, 0.5, 42.0]])
    np.testing.assert_allclose(model.predict(params, S0=S0), S0[..., None] * unit, rtol=1e-14)
    np.testing.assert_allclose(model.predict(params, S0=7.0), 7.0 * unit, rtol=1e-14)
    packed = torch.as_tensor(model.pack(params))
    np.testing.assert_allclose(unit, model.measurement_forward(packed).numpy(), rtol=1e-14)


def test_predicted_signal_is_one_at_b0(model):
    protocol = model.protocol
    assert protocol.bvals[protocol.b0_mask].max() > 0  # the protocol has a b=5 s/mm² "b=0" image
    params = named_params(model, batch=(50,), seed=11)
    S0 = np.linspace(10.0, 500.0, 50)
    signals = model.predict(params, S0=S0)
    np.testing.assert_allclose(signals[:, protocol.b0_mask], S0[:, None] * np.ones(protocol.n_b0), rtol=1e-12)
    assert np.all(np.isfinite(signals)) and np.all(signals > 0)


def test_forward_is_a_pure_function(model):
    # the forward model is a pure function: same input, same output, input untouched
    packed = model.constrain(unconstrained_sample(model, (5,), seed=12))
    copy = packed.clone()
    first = model.forward(packed)
    torch.testing.assert_close(model.forward(packed), first, rtol=0, atol=0)
    torch.testing.assert_close(packed, copy, rtol=0, atol=0)
