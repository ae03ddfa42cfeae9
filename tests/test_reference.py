"""Every closed-form case of shared/reference/kernels.npz (neural-tangents 0.6.5, float64).

Tolerances (reference/README.md): float64 rtol 1e-11 (+1e-13 of max|K| for entries near 0);
entries whose inputs have |ρ| = 1 (the diagonal, duplicate, negated and scaled rows) rtol 1e-7,
because neural-tangents rounds S and q differently there. Where the reference is NaN (its
RectifiedMonomial bug) or provably off (below), the independent NumPy oracle is the reference.
float32: within 1e-5 of max|K|.
"""
import numpy as np
import pytest

import ntkfast as nf
import numpy_reference
from conftest import reference_dir
from reference_cases import activation, network

_DIR = reference_dir()
if _DIR is None:
    CASES = []
else:
    import json

    CASES = [c for c in json.loads((_DIR / "kernels.json").read_text())["cases"]
             if activation(c) is not None]


def _arrays(kernel_reference, case):
    _, arrays = kernel_reference
    cid = case["case_id"]
    x1 = arrays[cid + "__x1"]
    x2 = arrays.get(cid + "__x2")
    return x1, x2, {k: arrays[cid + "__" + k] for k in ("nngp", "ntk", "cov1")}


def _unit_correlation(x1, x2):
    """Entries whose inputs are parallel or antiparallel (|ρ| = 1) or have a zero-norm row."""
    x2 = x1 if x2 is None else x2
    n1, n2 = np.linalg.norm(x1, axis=1), np.linalg.norm(x2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (x1 @ x2.T) / np.outer(n1, n2)
    return ~(np.abs(rho) < 1 - 1e-9)


def _check(got, want, loose_mask, rtol, loose, scale):
    """|got - want| <= rtol |want| + 1e-13 scale, with rtol -> loose on loose_mask entries."""
    bound = np.where(loose_mask, loose, rtol) * np.abs(want) + 1e-13 * scale
    err = np.abs(got - want)
    bad = err > bound
    assert not bad.any(), (f"{bad.sum()} entries off, worst relative error "
                           f"{np.max(err[bad] / (np.abs(want[bad]) + 1e-300)):.3e} at "
                           f"{np.argwhere(bad)[0].tolist()}")


@pytest.mark.parametrize("case", CASES, ids=[c["case_id"] for c in CASES])
def test_float64(kernel_reference, case):
    x1, x2, ref = _arrays(kernel_reference, case)
    net = network(case)
    got = nf.gram(x1, x2, net=net)
    oracle = numpy_reference.kernels(net, x1, x2)
    near_unit = _unit_correlation(x1, x2)
    for name, want_oracle in zip(("nngp", "ntk"), oracle):
        value = getattr(got, name)
        assert np.isfinite(value).all()
        want, loose = ref[name], near_unit
        scale = np.abs(want_oracle).max()
        if np.isnan(want).any():
            # neural-tangents' RectifiedMonomial is NaN here (its bug): the NumPy oracle decides.
            assert case["activation"].startswith("RectifiedMonomial")
            want = want_oracle
        elif case["activation"] == "ExpNormalized" and case["inputs"].startswith("zero_rows"):
            # neural-tangents floors √(q1 q2) at 1e-15, which leaves ~5e-8 where the limit is 0
            # (the zero-norm rows); elsewhere it must agree as usual.
            assert np.all(np.abs(value - want)[near_unit] <= 1e-7 * scale)
            want = np.where(near_unit, want_oracle, want)
        elif case["activation"] == "Sign":
            # Sign's second layer has a √ singularity at ρ = 1, which turns neural-tangents'
            # rounding of ρ (~1e-16) into errors up to 1e-2 on those entries: the oracle decides.
            want = np.where(near_unit, want_oracle, want)
        _check(value, want, loose, 1e-11, 1e-7, scale)
        # and the independent NumPy oracle everywhere
        _check(value, want_oracle, near_unit, 1e-11, 1e-7, scale)
    # The Gram's diagonal is the per-row variance neural-tangents reports as cov1.
    if x2 is None and not np.isnan(ref["cov1"]).any():
        np.testing.assert_allclose(np.diag(got.nngp), ref["cov1"], rtol=1e-11, atol=1e-13 * np.abs(ref["cov1"]).max())
    if not np.isnan(ref["cov1"]).any():
        diag = nf.diagonal(x1, net=net, get="nngp")
        if not (case["activation"] == "ExpNormalized" and case["inputs"].startswith("zero_rows")):
            np.testing.assert_allclose(diag, ref["cov1"], rtol=1e-11, atol=1e-13 * np.abs(ref["cov1"]).max())


@pytest.mark.parametrize("case", CASES, ids=[c["case_id"] for c in CASES])
def test_float32(kernel_reference, case):
    x1, x2, ref = _arrays(kernel_reference, case)
    net = network(case)
    got = nf.gram(x1.astype(np.float32), None if x2 is None else x2.astype(np.float32), net=net)
    oracle = numpy_reference.kernels(net, x1, x2)
    for name, want_oracle in zip(("nngp", "ntk"), oracle):
        value = getattr(got, name)
        assert value.dtype == np.float32
        want = ref[name]
        if np.isnan(want).any() or case["activation"] == "Sign":
            want = want_oracle  # see test_float64
        assert np.abs(value - want).max() <= 1e-5 * np.abs(want).max()
