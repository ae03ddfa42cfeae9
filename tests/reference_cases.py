"""The networks of shared/reference/kernels.json as ntkfast specs."""
import ntkfast as nf


def activation(case):
    """The ntkfast layer for a reference case, or None for neural-tangents' numerical layers."""
    name, params = case["activation"], dict(case["activation_params"])
    if name.startswith("Numerical_"):
        return None  # ElementwiseNumerical (Gauss-Hermite in neural-tangents): not a closed form
    if name == "Elementwise_erf_autodiff":
        return nf.Erf()  # stax.Elementwise(erf, arcsin nngp_fn): the Erf kernel by autodiff
    for prefix, cls in (("RectifiedMonomial", nf.RectifiedMonomial), ("Monomial", nf.Monomial),
                        ("Hermite", nf.Hermite)):
        if name.startswith(prefix):
            return cls(**params)
    return getattr(nf, name)(**params)


def network(case):
    act = activation(case)
    if act is None:
        return None
    w, p = case["hidden_width"], case["parameterization"]
    layers = []
    for _ in range(case["depth"]):
        layers += [nf.Dense(w, case["W_std"], case["b_std"], p), act]
    readout = case["readout"]
    layers.append(nf.Dense(readout["out_dim"], readout["W_std"], readout["b_std"], p))
    return nf.serial(*layers)
