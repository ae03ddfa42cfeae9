# Fit atan(r) = r + r*z*P(z), z=r^2, |r| <= tan(pi/8), minimax-ish via Chebyshev-node least squares in mpmath
import mpmath as mp
mp.mp.dps = 60
def fit(deg, npts=400):
    zmax = mp.tan(mp.pi/8)**2
    nodes = [zmax*(1+mp.cos(mp.pi*(2*k+1)/(2*npts)))/2 for k in range(npts)]
    def g(z):
        if z == 0: return mp.mpf(-1)/3
        r = mp.sqrt(z); return (mp.atan(r)/r - 1)/z
    # weighted LS: relative error in atan ~ r*z*err/atan ~ z*err -> weight z (but keep nonzero)
    A = mp.matrix(npts, deg+1); b = mp.matrix(npts, 1)
    for i, z in enumerate(nodes):
        w = z + zmax/50
        for j in range(deg+1): A[i, j] = w * z**j
        b[i] = w * g(z)
    coef = mp.lu_solve(A.T*A, A.T*b)
    return [coef[j] for j in range(deg+1)]
import numpy as np
for deg, T in ((11, np.float64), (12, np.float64), (5, np.float32), (4, np.float32)):
    c = fit(deg)
    cs = [T(float(x)) for x in c]
    rs = np.linspace(0, float(mp.tan(mp.pi/8)), 20001).astype(T)
    z = rs*rs
    p = np.zeros_like(rs)
    for cc in reversed(cs): p = p*z + cc
    approx = rs + rs*z*p
    exact = np.array([float(mp.atan(mp.mpf(float(r)))) for r in rs[::10]])
    err = np.abs((approx[::10].astype(np.float64) - exact)/np.where(exact==0,1,exact))
    print(T.__name__, deg, 'max rel err', err.max(), 'ulps', err.max()/np.finfo(T).eps)
    print([repr(float(x)) for x in c])
print('---')
for deg, T in ((8, np.float64), (9, np.float64), (10, np.float64), (3, np.float32)):
    c = fit(deg)
    cs = [T(float(x)) for x in c]
    rs = np.linspace(0, float(mp.tan(mp.pi/8)), 20001).astype(T)
    z = rs*rs
    p = np.zeros_like(rs)
    for cc in reversed(cs): p = p*z + cc
    approx = rs + rs*z*p
    exact = np.array([float(mp.atan(mp.mpf(float(r)))) for r in rs[::10]])
    err = np.abs((approx[::10].astype(np.float64) - exact)/np.where(exact==0,1,exact))
    print(T.__name__, deg, 'max rel err', err.max(), 'ulps', err.max()/np.finfo(T).eps)
