"""Shared helpers of the asv suite."""
import numpy as np


def points(n, d=784, dtype="float64", seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


def cuda_or_skip():
    """Raises NotImplementedError (asv's 'skip this benchmark') when the CUDA backend cannot run."""
    import ntkfast

    reason = ntkfast.get_config()["cuda"]["reason"]
    if reason is not None:
        raise NotImplementedError(f"CUDA backend unavailable: {reason}")
    import cupy

    return cupy
