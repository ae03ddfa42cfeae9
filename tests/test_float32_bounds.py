"""The float32 accuracy stated in the README, as measured bounds: generic inputs within ~1e-7 of
max|K| (layer maps in float64, one rounding at the end); near-duplicate rows within the larger
bound that a float32 GEMM allows (ρ is resolved to ~√d·ε₃₂ and the ReLU maps amplify the error of
1 - ρ as its square root). The reference is float64 on the same float32 points."""
import numpy as np
import pytest

import ntkfast as nf

# max |K32 - K64| / max |K64| of the NTK; measured at d = 784 (README): generic 3e-8 to 6e-8,
# near-duplicates 1.5e-5 / 4.5e-5 / 1.4e-4 at depths 1 / 3 / 10, at 1 - ρ just above the exact
# near-parallel path's 2^-16 (exact_pair.hpp; below it they are generic; before it, 4.8e-4 / 1.4e-3
# / 4.6e-3 at 1 - ρ ~ 5e-6). Bounds kept from then.
GENERIC_BOUND = 1.2e-7
NEAR_DUPLICATE_BOUND = {1: 4e-4, 3: 1e-3, 10: 3e-3}


def _relative_error(x32, net):
    k32 = nf.gram(x32, net=net, get="ntk")
    k64 = nf.gram(x32.astype(np.float64), net=net, get="ntk")
    return float(np.abs(k32 - k64).max() / np.abs(k64).max())


@pytest.mark.parametrize("depth", [1, 3, 10])
def test_float32_bounds(rng, depth):
    net = nf.MLP(depth, "relu", W_std=1.5, b_std=0.05)
    x = rng.standard_normal((200, 784))
    assert _relative_error(x.astype(np.float32), net) <= GENERIC_BOUND
    worst = 0.0
    for eps in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        near = np.concatenate([x[:100], x[:100] + eps * rng.standard_normal((100, 784))])
        worst = max(worst, _relative_error(near.astype(np.float32), net))
    assert worst <= NEAR_DUPLICATE_BOUND[depth]
    assert worst > 10 * GENERIC_BOUND  # the bound is real: a GEMM-limited effect, not noise


@pytest.mark.parametrize("dtype,bound", [(np.float64, 1e-15), (np.float32, 1e-6)])
def test_tile_size_moves_results_by_a_few_ulps_only(rng, dtype, bound):
    """As the docstring of gram states: the GEMM's summation order may change with the tile
    shape, nothing else does."""
    net = nf.MLP(3, "relu", W_std=1.5, b_std=0.05)
    x = rng.standard_normal((300, 200)).astype(dtype)
    ref = nf.gram(x, net=net, get="ntk")
    for tile in (8, 37, 100, 300):
        k = nf.gram(x, net=net, get="ntk", tile_size=tile)
        assert np.abs(k - ref).max() <= bound * np.abs(ref).max()
        assert np.array_equal(k, k.T)
        assert np.array_equal(np.diag(k), nf.diagonal(x, net=net, get="ntk"))
