"""An independent reference for the Skellam accountant, written from the papers, not the library.

Arbitrary precision (mpmath), exact binomial coefficients, every sum spelled out:

* the RDP bound of the multi-dimensional Skellam mechanism (Agarwal, Kairouz, Liu, NeurIPS
  2021, Theorem 3.5; Sk(mu) has variance mu): alpha D2^2 / (2 mu)
  + min(((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu));
* the exact Rényi divergence of the one-dimensional Skellam shift, from its PMF
  P(k) = exp(-mu) I_k(mu) (modified Bessel function of the first kind);
* Zhu & Wang (ICML 2019) Theorem 6, the general Poisson-subsampled RDP bound at integer orders;
* RDP -> (ε, δ) by Balle et al. (2020), Theorem 21 (as Opacus converts).

Run it as a script to print the numbers the tests state:
``python tests/shared/skellam_reference.py``.
"""

from __future__ import annotations

import math

import mpmath as mp

mp.mp.dps = 50
ORDERS = list(range(2, 129)) + [144, 160, 192, 224, 256]


def theorem_rdp(alpha: int, mu, l1, l2):
    mu, l1, l2 = mp.mpf(mu), mp.mpf(l1), mp.mpf(l2)
    first = alpha * l2**2 / (2 * mu)
    second = min(((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu))
    return first + second


def skellam_pmf(k: int, mu):
    return mp.exp(-mp.mpf(mu)) * mp.besseli(abs(k), mp.mpf(mu))


def exact_divergence(alpha: int, mu, shift: int) -> mp.mpf:
    """D_alpha(Sk(mu) + shift || Sk(mu)) by direct summation over the support."""
    width = int(shift + 60 * math.sqrt(mu) + 60)
    total = mp.mpf(0)
    for k in range(-width, width + 1):
        p, q = skellam_pmf(k - shift, mu), skellam_pmf(k, mu)
        total += p**alpha * q ** (1 - alpha)
    return mp.log(total) / (alpha - 1)


def subsampled(alpha: int, q, eps) -> mp.mpf:
    q = mp.mpf(q)
    total = (1 - q) ** (alpha - 1) * (alpha * q - q + 1)
    total += mp.binomial(alpha, 2) * q**2 * (1 - q) ** (alpha - 2) * mp.exp(eps(2))
    for j in range(3, alpha + 1):
        total += (
            3 * mp.binomial(alpha, j) * q**j * (1 - q) ** (alpha - j) * mp.exp((j - 1) * eps(j))
        )
    return min(mp.log(total) / (alpha - 1), eps(alpha))


def epsilon(mu, q, l1, l2, rounds: int, delta) -> mp.mpf:
    delta = mp.mpf(delta)
    best = mp.inf
    for a in ORDERS:
        rdp = rounds * subsampled(a, q, lambda j: theorem_rdp(j, mu, l1, l2))
        eps = rdp - (mp.log(delta) + mp.log(a)) / (a - 1) + mp.log(mp.mpf(a - 1) / a)
        best = min(best, eps)
    return best


if __name__ == "__main__":
    l2 = 100
    l1 = l2 * min(math.sqrt(1000), l2)
    print(
        "eps(mu=2e4, q=0.1, l2=100, d=1000, 20 rounds, delta=1e-5) =",
        mp.nstr(epsilon(2e4, 0.1, l1, l2, 20, 1e-5), 15),
    )
    print("eps(mu=5e4, q=1, same, 1 round) =", mp.nstr(epsilon(5e4, 1, l1, l2, 1, 1e-5), 15))
    for a in (2, 8, 32):
        print(
            f"alpha {a}: exact {mp.nstr(exact_divergence(a, 20, 3), 12)}, "
            f"theorem {mp.nstr(theorem_rdp(a, 20, 3, 3), 12)}, gaussian {a * 9 / 40}"
        )
