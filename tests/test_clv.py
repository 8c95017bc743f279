"""BG/NBD and Gamma-Gamma (training.clv): likelihoods against cases computed by hand, the published
CDNOW example, and parameter recovery on customers simulated from known parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.clv import (
    BGNBDParams,
    GammaGammaParams,
    bgnbd_log_likelihood,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
)


def test_bgnbd_log_likelihood_by_hand() -> None:
    # r = α = a = b = 1, x = 0, T = 1: L = Γ(1)·1/Γ(1) · B(1,1)/B(1,1) · (1+1)^-1 = 1/2
    assert bgnbd_log_likelihood(1, 1, 1, 1, [0], [0], [1])[0] == pytest.approx(math.log(0.5))
    # same parameters, x = 1, t_x = 1, T = 2: Γ(2)/Γ(1) · B(1,2)/B(1,1) = 1/2;
    # bracket (1+2)^-2 + 1/(1+1-1) · (1+1)^-2 = 1/9 + 1/4 = 13/36 -> L = 13/72
    assert bgnbd_log_likelihood(1, 1, 1, 1, [1], [1], [2])[0] == pytest.approx(math.log(13 / 72))
    # r=2, α=3, a=2, b=3, x=1, t_x=1, T=2: Γ(3)/Γ(2) · 3² · B(2,4)/B(2,3) = 2·9·(1/20)/(1/12) = 10.8;
    # bracket 5^-3 + 2/3 · 4^-3 = 0.008 + 1/96 -> L = 10.8 · (0.008 + 1/96)
    assert bgnbd_log_likelihood(2, 3, 2, 3, [1], [1], [2])[0] == pytest.approx(
        math.log(10.8 * (0.008 + 1 / 96))
    )


def test_p_alive_by_hand_and_one_time_buyers_alive() -> None:
    m = BGNBDParams(r=2, alpha=3, a=2, b=3)
    # odds of having dropped out = a/(b+x-1) · ((α+T)/(α+t_x))^(r+x) = 2/3 · (5/4)^3
    odds = 2 / 3 * (5 / 4) ** 3
    assert m.p_alive([1], [1], [2])[0] == pytest.approx(1 / (1 + odds))
    assert m.p_alive([0], [0], [10])[0] == 1.0  # BG/NBD: no repeat purchase, no chance to drop out
    # a longer silence after the same history lowers it
    assert m.p_alive([3], [2], [20])[0] < m.p_alive([3], [2], [5])[0]


def test_expected_purchases_matches_the_published_cdnow_example() -> None:
    """Fader, Hardie & Lee (2005): with the CDNOW estimates, a customer with x = 2, t_x = 30.43,
    T = 38.86 weeks is expected to make 1.226 purchases in the next 39 weeks."""
    m = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    assert m.expected_purchases(39, [2], [30.43], [38.86])[0] == pytest.approx(1.226, abs=0.003)
    # a new customer's expected repeat purchases grow with the horizon
    assert 0 < m.expected_purchases_new(13) < m.expected_purchases_new(39)


def simulate_bgnbd(
    n: int, r: float, alpha: float, a: float, b: float, seed: int, holdout: float = 0.0
) -> tuple[np.ndarray, ...]:
    """Customers acquired at times spread over 20 weeks, observed until week 40 (T in [20, 40]);
    λ ~ Gamma(r, 1/α), p ~ Beta(a, b); exponential gaps, drop-out with probability p after each
    purchase. Returns x, t_x, T, alive at T, purchases in (T, T + holdout]."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(r, 1 / alpha, n)
    p = rng.beta(a, b, n)
    T = 40 - rng.uniform(0, 20, n)
    end = T + holdout
    t = np.zeros(n)
    x = np.zeros(n, dtype=np.int64)
    t_x = np.zeros(n)
    x_hold = np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    active = np.ones(n, dtype=bool)  # still simulating: alive and before `end`
    while active.any():
        idx = np.flatnonzero(active)
        t[idx] += rng.exponential(1 / lam[idx])
        done = t[idx] > end[idx]
        active[idx[done]] = False
        buy = idx[~done]
        in_cal = t[buy] <= T[buy]
        x[buy[in_cal]] += 1
        t_x[buy[in_cal]] = t[buy[in_cal]]
        x_hold[buy[~in_cal]] += 1
        dies = rng.random(len(buy)) < p[buy]
        alive[buy[dies & in_cal]] = False  # dropped out before T
        active[buy[dies]] = False
    return x, t_x, T, alive, x_hold


def test_bgnbd_recovers_known_parameters_from_simulated_customers() -> None:
    truth = {"r": 0.5, "alpha": 4.0, "a": 0.8, "b": 2.5}
    x, t_x, T, alive, x_hold = simulate_bgnbd(20_000, **truth, seed=7, holdout=26)
    fit = fit_bgnbd(x, t_x, T)
    assert fit.r == pytest.approx(truth["r"], rel=0.05)
    assert fit.alpha == pytest.approx(truth["alpha"], rel=0.08)
    assert fit.a == pytest.approx(truth["a"], rel=0.1)
    assert fit.b == pytest.approx(truth["b"], rel=0.15)
    # p_alive is calibrated among the repeat buyers: its mean is the share truly alive at T
    rep = x > 0
    assert fit.p_alive(x, t_x, T)[rep].mean() == pytest.approx(alive[rep].mean(), abs=0.02)
    # and the expected hold-out purchases add up to the simulated ones
    assert fit.expected_purchases(26, x, t_x, T).sum() == pytest.approx(x_hold.sum(), rel=0.04)


def test_bgnbd_rejects_impossible_histories() -> None:
    with pytest.raises(ValueError, match="t_x <= T"):
        fit_bgnbd([1, 2], [5, 3], [4, 10])
    with pytest.raises(ValueError, match="non-empty"):
        fit_bgnbd([], [], [])


def test_gamma_gamma_log_likelihood_by_hand() -> None:
    # p=1, q=2, γ=1, x=1, m=1: Γ(3)/(Γ(1)Γ(2)) · 1 · 1^0 · 1^1 / (1+1)^3 = 2/8
    assert gamma_gamma_log_likelihood(1, 2, 1, [1], [1])[0] == pytest.approx(math.log(0.25))
    # p=2, q=3, γ=4, x=2, m=5: Γ(7)/(Γ(4)Γ(3)) · 4³ · 5³ · 2⁴ / (4+10)^7
    by_hand = 720 / (6 * 2) * 64 * 125 * 16 / 14**7
    assert gamma_gamma_log_likelihood(2, 3, 4, [2], [5])[0] == pytest.approx(math.log(by_hand))


def test_gamma_gamma_recovers_parameters_and_shrinks_to_the_population_mean() -> None:
    rng = np.random.default_rng(3)
    p, q, gamma = 6.0, 4.0, 15.0
    n = 20_000
    nu = rng.gamma(q, 1 / gamma, n)
    x = rng.integers(1, 8, n)
    # mean of x spends ~ Gamma(p, ν) is Gamma(p x, ν x)
    m = rng.gamma(p * x, 1 / (nu * x))
    fit = fit_gamma_gamma(x, m)
    assert fit.p == pytest.approx(p, rel=0.1)
    assert fit.q == pytest.approx(q, rel=0.1)
    assert fit.gamma == pytest.approx(gamma, rel=0.15)
    gg = GammaGammaParams(p=6.0, q=4.0, gamma=15.0)
    assert gg.population_mean == pytest.approx(30.0)
    assert gg.expected_spend([0], [np.nan])[0] == pytest.approx(30.0)  # nothing known: the population
    # one purchase of 100 moves the estimate part of the way; ten purchases of 100 most of the way
    one, ten = gg.expected_spend([1, 10], [100, 100])
    assert 30 < one < ten < 100
    assert one == pytest.approx(6 * (15 + 100) / (6 + 4 - 1))
