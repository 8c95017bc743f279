"""Customer lifetime models: BG/NBD for "is this customer still alive, and how often will they buy",
Gamma-Gamma for "how much per purchase" (Fader, Hardie & Lee 2005: "Counting your customers the
easy way", Marketing Science 24(2); "RFM and CLV", JMR 42(4)).

Input per customer, in one time unit (weeks in shoprec): `x` = repeat purchases (purchase occasions
after the first), `t_x` = time of the last purchase since the first, `T` = time from the first
purchase to the end of the observation. Both models are fitted by maximising the published
log-likelihoods with scipy (L-BFGS-B over the log of the parameters, so they stay positive).

    bg = fit_bgnbd(x, t_x, T)                 # BGNBDParams(r, alpha, a, b, log_likelihood, n)
    bg.p_alive(x, t_x, T)                     # P(still active | history)
    bg.expected_purchases(t, x, t_x, T)       # E[purchases in the next t | history]
    gg = fit_gamma_gamma(x, m)                # m = mean spend of the x repeat purchases (x > 0)
    gg.expected_spend(x, m)                   # E[spend per purchase | history]; population mean for x = 0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special


def _arrays(*cols: object) -> list[np.ndarray]:
    return [np.asarray(c, dtype=np.float64) for c in cols]


def bgnbd_log_likelihood(
    r: float, alpha: float, a: float, b: float, x: object, t_x: object, T: object
) -> np.ndarray:
    """Per-customer BG/NBD log-likelihood (Fader, Hardie & Lee 2005, eq. 6):

    L = Γ(r+x) α^r / Γ(r) · B(a, b+x) / B(a, b) · [(α+T)^-(r+x) + 1{x>0} · a/(b+x-1) · (α+t_x)^-(r+x)]
    """
    x, t_x, T = _arrays(x, t_x, T)
    head = (
        special.gammaln(r + x)
        - special.gammaln(r)
        + r * np.log(alpha)
        + special.betaln(a, b + x)
        - special.betaln(a, b)
    )
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(
            x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x), -np.inf
        )
    return head + np.logaddexp(a3, a4)


@dataclass(frozen=True)
class BGNBDParams:
    """A fitted BG/NBD: purchase rates λ ~ Gamma(r, α) (α in the time unit of the fit), drop-out
    probability after each purchase p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = float("nan")  # total, at the optimum
    n: int = 0  # customers fitted

    def p_alive(self, x: object, t_x: object, T: object) -> np.ndarray:
        """P(alive at T | x, t_x, T) = 1 / (1 + 1{x>0} · a/(b+x-1) · ((α+T)/(α+t_x))^(r+x)).
        A customer without a repeat purchase is alive with probability 1 (the model's known quirk:
        BG/NBD lets a customer drop out only right after a purchase)."""
        x, t_x, T = _arrays(x, t_x, T)
        return 1.0 / (1.0 + self._odds_dead(x, t_x, T))

    def _odds_dead(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_odds = (
                np.log(a)
                - np.log(np.maximum(b + x - 1, 1e-300))
                + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
            )
            return np.where(x > 0, np.exp(np.minimum(log_odds, 700.0)), 0.0)

    def expected_purchases(self, t: float, x: object, t_x: object, T: object) -> np.ndarray:
        """E[Y(t) | x, t_x, T]: expected purchases in the next `t` time units (eq. 10):

        (a+b+x-1)/(a-1) · [1 - ((α+T)/(α+T+t))^(r+x) · ₂F₁(r+x, b+x; a+b+x-1; t/(α+T+t))] / (1 + odds_dead)
        """
        x, t_x, T = _arrays(x, t_x, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + T + t)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        ratio = np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t)))
        num = (a + b + x - 1) / (a - 1) * (1.0 - ratio * hyp)
        return num / (1.0 + self._odds_dead(x, t_x, T))

    def expected_purchases_new(self, t: float) -> float:
        """E[X(t)] for a customer just acquired (eq. 9): repeat purchases expected in their first t."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + t)
        return float(
            (a + b - 1) / (a - 1) * (1.0 - (alpha / (alpha + t)) ** r * special.hyp2f1(r, b, a + b - 1, z))
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "r": self.r,
            "alpha": self.alpha,
            "a": self.a,
            "b": self.b,
            "log_likelihood": self.log_likelihood,
            "n": self.n,
        }


def fit_bgnbd(x: object, t_x: object, T: object, *, penalizer: float = 0.0) -> BGNBDParams:
    """Maximum-likelihood BG/NBD on per-customer (x, t_x, T). `penalizer` adds λ·Σ params² to the
    negative log-likelihood (0 = the published, unpenalised fit). Raises ValueError on inputs that
    break the model's assumptions (negative values, t_x > T, x > 0 with t_x = 0 is allowed)."""
    x, t_x, T = _arrays(x, t_x, T)
    if not (len(x) == len(t_x) == len(T)) or len(x) == 0:
        raise ValueError("fit_bgnbd needs equally long, non-empty x, t_x and T")
    if (x < 0).any() or (t_x < 0).any() or (T <= 0).any() or (t_x > T + 1e-9).any():
        raise ValueError("fit_bgnbd needs x >= 0, 0 <= t_x <= T and T > 0 for every customer")
    # Identical histories share one likelihood term: fitting the distinct (x, t_x, T) with weights
    # is exact and much faster on large shops.
    rows, weight = np.unique(np.column_stack([x, t_x, T]), axis=0, return_counts=True)
    ux, ut, uT = rows[:, 0], rows[:, 1], rows[:, 2]
    scale = max(float(np.mean(T)), 1e-9)

    def nll(log_params: np.ndarray) -> float:
        r, alpha, a, b = np.exp(log_params)
        ll = np.dot(weight, bgnbd_log_likelihood(r, alpha, a, b, ux, ut, uT))
        pen = penalizer * float(np.sum(np.exp(log_params) ** 2))
        value = -(ll / len(x)) + pen
        return float(value) if np.isfinite(value) else 1e300

    start = np.log([1.0, scale, 1.0, 1.0])
    res = optimize.minimize(nll, start, method="L-BFGS-B", bounds=[(-12.0, 12.0)] * 4)
    # Polish with Nelder-Mead: numerical gradients of the hypergeometric-free likelihood are fine,
    # but a second, derivative-free pass makes the optimum robust to flat directions.
    res = optimize.minimize(
        nll, res.x, method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000}
    )
    r, alpha, a, b = (float(v) for v in np.exp(res.x))
    total = float(np.dot(weight, bgnbd_log_likelihood(r, alpha, a, b, ux, ut, uT)))
    return BGNBDParams(r=r, alpha=alpha, a=a, b=b, log_likelihood=total, n=len(x))


def gamma_gamma_log_likelihood(p: float, q: float, gamma: float, x: object, m: object) -> np.ndarray:
    """Per-customer Gamma-Gamma log-likelihood of the mean spend `m` over `x` > 0 purchases
    (Fader, Hardie & Lee 2005b, eq. 3; spend per purchase ~ Gamma(p, ν), ν ~ Gamma(q, γ)):

    L = Γ(px+q) / (Γ(px) Γ(q)) · γ^q · m^(px-1) · x^(px) / (γ + m x)^(px+q)
    """
    x, m = _arrays(x, m)
    return (
        special.gammaln(p * x + q)
        - special.gammaln(p * x)
        - special.gammaln(q)
        + q * np.log(gamma)
        + (p * x - 1) * np.log(m)
        + p * x * np.log(x)
        - (p * x + q) * np.log(gamma + m * x)
    )


@dataclass(frozen=True)
class GammaGammaParams:
    """A fitted Gamma-Gamma spend model: spend per purchase ~ Gamma(p, ν), ν ~ Gamma(q, γ)."""

    p: float
    q: float
    gamma: float
    log_likelihood: float = float("nan")
    n: int = 0

    def expected_spend(self, x: object, m: object) -> np.ndarray:
        """E[spend per purchase | x purchases of mean m] = p(γ + m x) / (p x + q - 1): a weighted
        mean of the population mean pγ/(q-1) and the customer's own m. x = 0 (or m missing) gives
        the population mean."""
        x, m = _arrays(x, m)
        m = np.where(np.isfinite(m) & (x > 0), m, 0.0)
        x = np.where(m > 0, x, 0.0)
        return self.p * (self.gamma + m * x) / (self.p * x + self.q - 1)

    @property
    def population_mean(self) -> float:
        """Mean spend per purchase of the population, pγ/(q-1) (infinite for q <= 1)."""
        return float(self.p * self.gamma / (self.q - 1)) if self.q > 1 else float("inf")

    def to_dict(self) -> dict[str, float]:
        return {
            "p": self.p,
            "q": self.q,
            "gamma": self.gamma,
            "log_likelihood": self.log_likelihood,
            "n": self.n,
        }


def fit_gamma_gamma(x: object, m: object, *, penalizer: float = 0.0) -> GammaGammaParams:
    """Maximum-likelihood Gamma-Gamma over the customers with x > 0 repeat purchases and a positive
    mean spend `m` (the others carry no information on spend variation and are left out)."""
    x, m = _arrays(x, m)
    keep = (x > 0) & np.isfinite(m) & (m > 0)
    if keep.sum() < 3:
        raise ValueError(
            "fit_gamma_gamma needs at least 3 customers with repeat purchases and a positive spend"
        )
    x, m = x[keep], m[keep]

    def nll(log_params: np.ndarray) -> float:
        p, q, g = np.exp(log_params)
        value = -np.mean(gamma_gamma_log_likelihood(p, q, g, x, m)) + penalizer * float(
            np.sum(np.exp(log_params) ** 2)
        )
        return float(value) if np.isfinite(value) else 1e300

    start = np.log([1.0, 2.0, max(float(np.mean(m)), 1e-6)])
    res = optimize.minimize(nll, start, method="L-BFGS-B", bounds=[(-12.0, 12.0)] * 3)
    res = optimize.minimize(
        nll, res.x, method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000}
    )
    p, q, g = (float(v) for v in np.exp(res.x))
    total = float(np.sum(gamma_gamma_log_likelihood(p, q, g, x, m)))
    return GammaGammaParams(p=p, q=q, gamma=g, log_likelihood=total, n=int(len(x)))
