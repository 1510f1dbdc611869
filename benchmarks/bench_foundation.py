"""Foundation timings: G*, the κ's, 2-D kernels and the exact BN Gram map.

Targets: G* and the κ's each in < 50 ms after warm-up. Baselines
measured in the same run: SciPy adaptive ``dblquad`` and a 200-node
Gauss–Hermite product rule for the tanh 2-D kernel (speed *and* accuracy), and
a 200k-sample Monte Carlo for the BN Gram map.

Run: ``python benchmarks/bench_foundation.py`` (about 20 s on 2 cores).
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy import integrate

import normfield as nf
from normfield.gram.meanfield import gram_map_mc
from normfield.gram.fixed_point import _cached


def best_of(fn, repeat=7):
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), float(np.median(ts))


def row(label, t, target=None, extra=""):
    best, med = t
    mark = "" if target is None else ("  OK" if best < target else "  SLOW")
    print(f"{label:<58s} best {best * 1e3:8.2f} ms  median {med * 1e3:8.2f} ms{mark}{extra}")


def main() -> None:
    print("== G* (fixed_point), cache cleared before every call ==")
    for act, n in (("relu", 32), ("leaky_relu:0.2", 1024), ("tanh", 4), ("tanh", 32), ("gelu", 256),
                   ("selu", 1024), ("sigmoid", 8)):
        def f(act=act, n=n):
            _cached.cache_clear()
            nf.fixed_point(act, n)
        row(f"fixed_point({act!r}, {n})", best_of(f), 0.050)
    row("fixed_point('tanh', 32) cached", best_of(lambda: nf.fixed_point("tanh", 32)))

    print("\n== order parameters and kappas (Karakida eqs. 5-7, 11) ==")
    for act, sw2, sb2, L in (("relu", 2.0, 0.0, 3), ("relu", 2.0, 0.1, 50), ("tanh", 3.0, 0.64, 3),
                             ("tanh", 3.0, 0.64, 10), ("gelu", 2.0, 0.1, 5)):
        row(f"order_parameters({act!r}, {sw2}, {sb2}, L={L})",
            best_of(lambda: nf.order_parameters(act, sw2, sb2, L)), 0.050)

    for q11, q22, c in ((1.3, 0.7, 0.6), (25.0, 16.0, 0.9)):
        print(f"\n== tanh 2-D kernel E[tanh(u)tanh(v)], q11={q11}, q22={q22}, c={c} ==")
        q12 = c * math.sqrt(q11 * q22)
        a, b, s = math.sqrt(q11), math.sqrt(q22), math.sqrt(1 - c * c)
        ours, est = nf.kernel("tanh", q11, q22, q12, return_error=True)

        def dbl(a=a, b=b, c=c, s=s):
            g = lambda y, x: math.tanh(a * x) * math.tanh(b * (c * x + s * y)) * math.exp(-(x * x + y * y) / 2) / (2 * math.pi)  # noqa: E731
            return integrate.dblquad(g, -12, 12, -12, 12, epsabs=1e-14, epsrel=1e-14)[0]

        xg, wg = np.polynomial.hermite_e.hermegauss(200)
        wg = wg / wg.sum()

        def gh(a=a, b=b, c=c, s=s):
            return float(wg @ (np.tanh(a * xg[:, None]) * np.tanh(b * (c * xg[:, None] + s * xg[None, :]))) @ wg)

        t_ours = best_of(lambda: nf.kernel("tanh", q11, q22, q12))
        t_dbl = best_of(dbl, repeat=1)
        t_gh = best_of(gh)
        v_dbl, v_gh = dbl(), gh()
        row("normfield.kernel (polar tanh-sinh + radial trapezoid)", t_ours, extra=f"  estimate {float(est):.1e}")
        row("scipy dblquad (epsabs 1e-14)", t_dbl, extra=f"  |dblquad - ours| {abs(v_dbl - float(ours)):.1e}")
        row("Gauss-Hermite 200x200 product rule", t_gh, extra=f"  |GH - ours| {abs(v_gh - float(ours)):.1e}")
        print(f"speed-up vs dblquad: {t_dbl[0] / t_ours[0]:.0f}x")

    qs = np.random.default_rng(0).uniform(0.1, 3, size=(3, 1000))
    q12s = (qs[2] / 3 * 2 - 1) * np.sqrt(qs[0] * qs[1])
    row("kernel('gelu', ...) vectorised over 1000 covariances",
        best_of(lambda: nf.kernel("gelu", qs[0], qs[1], q12s), repeat=3))

    print("\n== BN Gram map, n = 8, relu: exact route vs Monte Carlo (200k draws) ==")
    A = np.random.default_rng(1).standard_normal((8, 5))
    G = A @ A.T / 5
    t_ex = best_of(lambda: nf.gram_map(G, "relu"))
    t_mc = best_of(lambda: gram_map_mc(G, "relu", samples=200_000), repeat=3)
    ex = nf.gram_map(G, "relu")
    mc, se = gram_map_mc(G, "relu", samples=200_000)
    row("gram_map exact (exp-sinh over s, closed-form kernels)", t_ex)
    row("gram_map_mc 200k samples", t_mc, extra=f"  max se {se.max():.1e}, max |exact-mc| {np.abs(ex - mc).max():.1e}")
    print(f"speed-up exact vs MC: {t_mc[0] / t_ex[0]:.0f}x (and ~1e-15 vs ~{se.max():.0e} error)")


if __name__ == "__main__":
    main()
