"""Scaling-law fits of final losses of training runs, and the compute-optimal allocation they imply.

Three fits, each from arrays of runs (one entry per run):
  fit_power_law   Kaplan et al. (2020): L(X) = (X_c / X)^alpha_X for X = N or D, least squares in log-log space.
  fit_isoflops    Hoffmann et al. (2022), Approach 2: per compute budget a parabola of L in ln N, its minimum
                  N_opt(C) (and D_opt = C / (6 N_opt)), then N_opt = G C^a and D_opt = G' C^b by least squares
                  in log-log space.
  fit_parametric  Hoffmann et al. (2022), Approach 3: L(N, D) = E + A / N^alpha + B / D^beta, minimising the Huber
                  loss of ln L_pred - ln L_obs with L-BFGS from a grid of starts, with bootstrap intervals.
compute_optimal turns a parametric fit into N_opt, D_opt and tokens per parameter at a budget C.
to_json serialises any of the results; plot writes the IsoFLOP curves and the compute-optimal frontier as PNGs.

Units: N is parameters, D training tokens, C FLOPs (C = 6 N D unless given), L the loss in nats per token (any
positive loss works; E is in its unit). Arrays are float64; a run's entries share an index across n, d, loss.

A run whose loss is not finite (it diverged) is left out of a fit and listed in the result's `excluded` (indices
into the input arrays); the fit refuses (ValueError) when too few runs remain. Non-positive or non-finite sizes,
token counts or budgets, and non-positive losses, are input errors and always refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import optimize
import threadpoolctl

# FLOPs per parameter per training token (forward and backward pass), as in Kaplan et al. and Hoffmann et al.
FLOPS_PER_PARAM_TOKEN = 6.0
HUBER_DELTA = 1e-3
PARAMS = ("E", "A", "B", "alpha", "beta")
# Derived from the parametric law: N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b.
DERIVED = ("G", "a", "b")
# The initialisation grid of Hoffmann et al. (2022), Approach 3: 4500 starts.
PAPER_GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
# Order of the optimiser's vector theta; the law is exp(a) / N^alpha + exp(b) / D^beta + exp(e).
_THETA = ("a", "b", "e", "alpha", "beta")
# Budgets whose FLOPs differ by less than this fraction are one IsoFLOP curve (C = 6ND rounds differently per run).
BUDGET_RTOL = 0.01
FIGSIZE = (8.0, 4.5)
DPI = 100


class ConvergenceWarning(UserWarning):
  """The best optimiser run of a fit stopped without meeting its convergence test."""


# ----------------------------------------------------------------------------------------------------------------
# Input checks.


def _vector(values: Any, name: str) -> np.ndarray:
  array = np.asarray(values, dtype=np.float64)
  if array.ndim != 1:
    raise ValueError(f"{name} must be one-dimensional (one entry per run); got shape {array.shape}")
  return array


def _indices(mask: np.ndarray, limit: int = 10) -> str:
  idx = np.flatnonzero(mask)
  text = ", ".join(str(i) for i in idx[:limit])
  return text + (f", ... ({len(idx)} in all)" if len(idx) > limit else "")


def _check_positive(array: np.ndarray, name: str) -> None:
  bad = ~(np.isfinite(array) & (array > 0))
  if bad.any():
    raise ValueError(f"{name} must be finite and positive; not so at run index {_indices(bad)} "
                     f"(values {array[bad][:5].tolist()})")


@dataclasses.dataclass(frozen=True)
class _Runs:
  """Checked runs: the kept runs' values (float64 [m]) and their indices in the input (int64 [m])."""
  index: np.ndarray
  columns: dict[str, np.ndarray]
  excluded: tuple[int, ...]


def _runs(loss: Any, need: int, what: str, **columns: Any) -> _Runs:
  """Checks the per-run arrays and leaves out runs with a non-finite loss; refuses when fewer than `need` remain."""
  loss = _vector(loss, "loss")
  arrays = {name: _vector(values, name) for name, values in columns.items()}
  lengths = {name: len(a) for name, a in arrays.items()} | {"loss": len(loss)}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"{', '.join(lengths)} must have one entry per run; got lengths {lengths}")
  for name, array in arrays.items():
    _check_positive(array, name)
  finite = np.isfinite(loss)
  if (loss[finite] <= 0).any():
    raise ValueError(f"loss must be positive; not so at run index {_indices(finite & (loss <= 0))}")
  excluded = tuple(int(i) for i in np.flatnonzero(~finite))
  kept = int(finite.sum())
  if kept < need:
    detail = f"; {len(excluded)} excluded for a non-finite loss (run index {_indices(~finite)})" if excluded else ""
    raise ValueError(f"{what} needs at least {need} runs with a finite loss; got {kept}{detail}")
  index = np.flatnonzero(finite)
  return _Runs(index, {"loss": loss[index]} | {name: a[index] for name, a in arrays.items()}, excluded)


def _nonfinite_to_none(value: Any) -> Any:
  """JSON has no NaN or infinity: such floats become null."""
  if isinstance(value, dict):
    return {k: _nonfinite_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_nonfinite_to_none(v) for v in value]
  if isinstance(value, np.ndarray):
    return _nonfinite_to_none(value.tolist())
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def _central(level: float) -> list[float]:
  """The lower and upper quantiles of a central interval of probability `level`."""
  return [(1 - level) / 2, (1 + level) / 2]


def _estimate(value: float, interval: tuple[float, float] | None) -> dict[str, float | None]:
  low, high = interval if interval is not None else (None, None)
  return {"value": value, "low": low, "high": high}


def _loglog_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
  """(slope, intercept, r^2) of the least-squares line ln y = slope ln x + intercept."""
  lx, ly = np.log(x), np.log(y)
  slope, intercept = np.polyfit(lx, ly, 1)
  residual = ly - (slope * lx + intercept)
  total = np.sum((ly - ly.mean()) ** 2)
  r2 = 1.0 - np.sum(residual ** 2) / total if total > 0 else 1.0
  return float(slope), float(intercept), float(r2)


# ----------------------------------------------------------------------------------------------------------------
# Kaplan et al.: L(X) = (X_c / X)^alpha_X.


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
  """L(X) = (scale / X)^exponent, fitted as ln L = exponent ln scale - exponent ln X.

  variable: what X is ("N" parameters or "D" tokens; any name the caller gave).
  scale: X_c in the unit of X. exponent: alpha_X. r2: coefficient of determination in log-log space.
  points: runs used. excluded: input indices of runs left out for a non-finite loss.
  """
  variable: str
  scale: float
  exponent: float
  r2: float
  points: int
  excluded: tuple[int, ...]

  def predict(self, x: Any) -> np.ndarray:
    """Loss at X = `x` (float64, the shape of `x`)."""
    return (self.scale / np.asarray(x, dtype=np.float64)) ** self.exponent

  def to_dict(self) -> dict[str, Any]:
    return {"kind": "power_law", "law": f"L({self.variable}) = ({self.variable}_c / {self.variable})^alpha",
            "variable": self.variable, f"{self.variable}_c": self.scale, "alpha": self.exponent, "r2": self.r2,
            "points": self.points, "excluded": list(self.excluded)}


def fit_power_law(x: Any, loss: Any, *, variable: str = "N") -> PowerLawFit:
  """Fits L(X) = (X_c / X)^alpha by least squares of ln L on ln X.

  x: float [m] model sizes N (parameters) or dataset sizes D (tokens), finite and positive. loss: float [m].
  variable: a name for X in the result and its JSON. Needs at least 2 runs with a finite loss and distinct X.
  """
  runs = _runs(loss, 2, f"a power law in {variable} (2 parameters)", **{variable: x})
  xs, ls = runs.columns[variable], runs.columns["loss"]
  if len(np.unique(xs)) < 2:
    raise ValueError(f"a power law in {variable} needs at least 2 distinct values of {variable}; got {xs[0]:.4g} only")
  slope, intercept, r2 = _loglog_line(xs, ls)
  if slope == 0:
    raise ValueError(f"loss does not change with {variable}: exponent 0, no scale {variable}_c")
  if slope > 0:
    warnings.warn(f"loss grows with {variable} (exponent {-slope:.3g} < 0): check the runs", RuntimeWarning,
                  stacklevel=2)
  exponent = -slope
  return PowerLawFit(variable, float(np.exp(intercept / exponent)), exponent, r2, len(xs), runs.excluded)


# ----------------------------------------------------------------------------------------------------------------
# Approach 2: IsoFLOP parabolas.


def budget_name(compute: float) -> str:
  """How a compute budget is named in results and messages, e.g. "C=6e+18"."""
  return f"C={compute:.3g}"


@dataclasses.dataclass(frozen=True)
class IsoflopBudget:
  """One IsoFLOP curve and its minimum.

  compute: the budget in FLOPs (geometric mean of its runs' budgets). n, loss: float64 [k] the runs, sorted by n.
  coefficients: (c2, c1, c0) of the parabola L = c2 x^2 + c1 x + c0 in x = ln N.
  n_opt: parameters at its minimum; d_opt = compute / (6 n_opt) tokens; loss_opt: the parabola's minimum.
  extrapolated: the minimum lies outside the sampled sizes, so it rests on the parabola's shape alone.
  """
  compute: float
  n: np.ndarray
  loss: np.ndarray
  coefficients: tuple[float, float, float]
  n_opt: float
  d_opt: float
  loss_opt: float
  extrapolated: bool

  @property
  def name(self) -> str:
    return budget_name(self.compute)

  def predict(self, n: Any) -> np.ndarray:
    """The parabola's loss at model sizes `n` (float64, the shape of `n`)."""
    return np.polyval(self.coefficients, np.log(np.asarray(n, dtype=np.float64)))


@dataclasses.dataclass(frozen=True)
class IsoflopFit:
  """Approach 2: N_opt = n_coefficient C^n_exponent and D_opt = d_coefficient C^d_exponent (C in FLOPs).

  budgets: the budgets that gave a minimum, by increasing compute.
  refused: budget name -> why it gave none (too few sizes, a parabola without a minimum).
  n_r2, d_r2: coefficients of determination of the two log-log lines.
  excluded: input indices of runs left out for a non-finite loss.
  level, intervals: central `level` percentile intervals from residual-bootstrap refits for a, G, b, G_prime and
  each budget's n_opt (key "n_opt:" + budget name); empty without bootstrap, or when every parabola has exactly 3
  sizes (no residuals). bootstrap_fits / bootstrap_failed: refits that gave a frontier / that did not (a refitted
  parabola without a minimum).
  """
  budgets: tuple[IsoflopBudget, ...]
  refused: dict[str, str]
  n_exponent: float
  n_coefficient: float
  d_exponent: float
  d_coefficient: float
  n_r2: float
  d_r2: float
  excluded: tuple[int, ...]
  level: float = 0.9
  intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
  bootstrap_fits: int = 0
  bootstrap_failed: int = 0

  def n_opt(self, compute: Any) -> np.ndarray:
    """Compute-optimal parameters at `compute` FLOPs (float64, the shape of `compute`)."""
    return self.n_coefficient * np.asarray(compute, dtype=np.float64) ** self.n_exponent

  def d_opt(self, compute: Any) -> np.ndarray:
    """Compute-optimal tokens at `compute` FLOPs (float64, the shape of `compute`)."""
    return self.d_coefficient * np.asarray(compute, dtype=np.float64) ** self.d_exponent

  def to_dict(self) -> dict[str, Any]:
    values = {"a": self.n_exponent, "G": self.n_coefficient, "b": self.d_exponent, "G_prime": self.d_coefficient}
    return {
        "kind": "isoflop", "law": "N_opt = G C^a, D_opt = G' C^b",
        **{k: _estimate(v, self.intervals.get(k)) for k, v in values.items()},
        "level": self.level, "bootstrap": {"fits": self.bootstrap_fits, "failed": self.bootstrap_failed},
        "n_r2": self.n_r2, "d_r2": self.d_r2,
        "budgets": [{"name": b.name, "compute": b.compute, "runs": len(b.n), "sizes": len(np.unique(b.n)),
                     "n_opt": _estimate(b.n_opt, self.intervals.get("n_opt:" + b.name)), "d_opt": b.d_opt,
                     "loss_opt": b.loss_opt, "extrapolated": b.extrapolated, "parabola_ln_n": list(b.coefficients)}
                    for b in self.budgets],
        "refused": dict(self.refused), "excluded": list(self.excluded)}


def _group_budgets(compute: np.ndarray, rtol: float) -> list[np.ndarray]:
  """Indices of runs per budget, by increasing compute; budgets within a relative `rtol` of their neighbour merge."""
  order = np.argsort(compute, kind="stable")
  log_c = np.log(compute[order])
  breaks = np.flatnonzero(np.diff(log_c) > math.log1p(rtol)) + 1
  return np.split(order, breaks)


def _parabola_minimum(ns: np.ndarray, ls: np.ndarray, min_sizes: int) -> tuple[np.ndarray, float] | str:
  """(coefficients, n_opt) of the parabola of `ls` in ln `ns`, or why there is none."""
  sizes = np.unique(ns)
  if len(sizes) < min_sizes:
    return (f"{len(sizes)} distinct model size{'s' if len(sizes) != 1 else ''} "
            f"({', '.join(f'{s:.3g}' for s in sizes)}); a parabola needs at least {min_sizes}")
  coefficients = np.polyfit(np.log(ns), ls, 2)
  c2, c1, _ = coefficients
  if not c2 > 0:
    return f"the parabola in ln N opens downward (curvature {c2:.3g}): no minimum"
  return coefficients, float(np.exp(-c1 / (2 * c2)))


def _isoflop_bootstrap(budgets: Sequence[IsoflopBudget], draws: int, level: float, seed: int,
                       min_sizes: int) -> tuple[dict[str, tuple[float, float]], int, int]:
  """Percentile intervals of a, G, b, G_prime and each budget's n_opt from a residual bootstrap: each refit adds
  residuals drawn with replacement from all parabolas' residuals (scaled by sqrt(m / (m - 3 * budgets)) for the
  coefficients they fitted) to every parabola's values at its runs. Resampling the runs themselves would need
  repeated sizes: with one run per size, most resamples lose a size. (intervals, refits used, refits without a
  frontier); no intervals when the parabolas fit their runs exactly (3 sizes per budget)."""
  fitted = [budget.predict(budget.n) for budget in budgets]
  residuals = np.concatenate([budget.loss - f for budget, f in zip(budgets, fitted)])
  free = len(residuals) - 3 * len(budgets)
  if draws == 0 or free <= 0:
    return {}, 0, 0
  residuals = residuals * math.sqrt(len(residuals) / free)
  rng = np.random.default_rng(seed)
  c = np.array([b.compute for b in budgets])
  rows, failed = [], 0
  for _ in range(draws):
    n_opts = []
    for budget, values in zip(budgets, fitted):
      found = _parabola_minimum(budget.n, values + rng.choice(residuals, len(values)), min_sizes)
      if isinstance(found, str):
        break
      n_opts.append(found[1])
    if len(n_opts) < len(budgets):
      failed += 1
      continue
    n_opts = np.array(n_opts)
    a, log_g, _ = _loglog_line(c, n_opts)
    b, log_g2, _ = _loglog_line(c, c / (FLOPS_PER_PARAM_TOKEN * n_opts))
    rows.append([a, math.exp(log_g), b, math.exp(log_g2), *n_opts])
  if not rows:
    return {}, 0, failed
  lows, highs = np.quantile(np.array(rows), _central(level), axis=0)
  names = ["a", "G", "b", "G_prime"] + ["n_opt:" + b.name for b in budgets]
  return {k: (float(lo), float(hi)) for k, lo, hi in zip(names, lows, highs)}, len(rows), failed


def fit_isoflops(n: Any, d: Any, loss: Any, compute: Any = None, *, min_sizes: int = 3,
                 budget_rtol: float = BUDGET_RTOL, bootstrap: int = 0, level: float = 0.9,
                 seed: int = 0) -> IsoflopFit:
  """Hoffmann et al. Approach 2 from runs grouped by compute budget.

  n: float [m] parameters; d: float [m] training tokens; loss: float [m] final losses; compute: float [m] FLOPs
  per run, default 6 n d. Runs whose budgets differ by less than `budget_rtol` (relative) form one budget.
  A budget needs `min_sizes` (>= 3) distinct model sizes and a parabola that opens upward, else it is refused by
  name (warned, and listed in `refused`); the fit needs 2 budgets that give a minimum.
  bootstrap: refits with the parabolas' residuals resampled (generator seeded by `seed`); their `level` central
  percentile intervals cover a, G, b, G_prime and each budget's n_opt.
  """
  if min_sizes < 3:
    raise ValueError(f"a parabola has 3 coefficients: min_sizes must be at least 3; got {min_sizes}")
  if bootstrap < 0:
    raise ValueError(f"bootstrap must be >= 0; got {bootstrap}")
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1); got {level}")
  columns = {"n": n, "d": d}
  if compute is not None:
    columns["compute"] = compute
  runs = _runs(loss, min_sizes, f"an IsoFLOP fit (a parabola of {min_sizes}+ sizes per budget)", **columns)
  ns, ls = runs.columns["n"], runs.columns["loss"]
  cs = runs.columns["compute"] if compute is not None else FLOPS_PER_PARAM_TOKEN * ns * runs.columns["d"]
  budgets, refused = [], {}
  for group in _group_budgets(cs, budget_rtol):
    c = float(np.exp(np.mean(np.log(cs[group]))))
    name = budget_name(c)
    order = group[np.argsort(ns[group], kind="stable")]
    found = _parabola_minimum(ns[order], ls[order], min_sizes)
    if isinstance(found, str):
      refused[name] = found
      continue
    coefficients, n_opt = found
    budgets.append(IsoflopBudget(
        compute=c, n=ns[order], loss=ls[order], coefficients=tuple(float(v) for v in coefficients), n_opt=n_opt,
        d_opt=c / (FLOPS_PER_PARAM_TOKEN * n_opt), loss_opt=float(np.polyval(coefficients, math.log(n_opt))),
        extrapolated=not ns[order][0] <= n_opt <= ns[order][-1]))
  if refused:
    warnings.warn("IsoFLOP budgets refused: " + "; ".join(f"{k}: {v}" for k, v in refused.items()), RuntimeWarning,
                  stacklevel=2)
  outside = [b.name for b in budgets if b.extrapolated]
  if outside:
    warnings.warn(f"IsoFLOP minima outside the sampled model sizes (extrapolated): {', '.join(outside)}",
                  RuntimeWarning, stacklevel=2)
  if len(budgets) < 2:
    have = ", ".join(b.name for b in budgets) or "none"
    detail = "; ".join(f"{k}: {v}" for k, v in refused.items())
    raise ValueError(f"an IsoFLOP frontier needs at least 2 budgets with a minimum; got {len(budgets)} ({have})"
                     + (f"; refused {detail}" if detail else ""))
  c = np.array([b.compute for b in budgets])
  a, log_g, n_r2 = _loglog_line(c, np.array([b.n_opt for b in budgets]))
  b_exp, log_g2, d_r2 = _loglog_line(c, np.array([b.d_opt for b in budgets]))
  intervals, fits, failed = _isoflop_bootstrap(budgets, bootstrap, level, seed, min_sizes)
  return IsoflopFit(tuple(budgets), refused, a, float(np.exp(log_g)), b_exp, float(np.exp(log_g2)), n_r2, d_r2,
                    runs.excluded, level, intervals, fits, failed)


# ----------------------------------------------------------------------------------------------------------------
# Approach 3: L(N, D) = E + A / N^alpha + B / D^beta.


def _huber(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
           delta: float) -> tuple[float, np.ndarray]:
  """Sum over runs of Huber(ln L_pred - ln L_obs) and its gradient in theta = (a, b, e, alpha, beta); float64 [5]."""
  a, b, e, alpha, beta = theta
  terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # [3, m]
  # logsumexp by hand: scipy's costs more than the rest of the objective together, and L-BFGS calls this often.
  top = terms.max(axis=0)
  exp = np.exp(terms - top)
  total = exp.sum(axis=0)
  log_pred = top + np.log(total)
  weights = exp / total  # each term's share of L_pred: d ln L_pred / d (a, b, e)
  r = log_pred - log_l
  small = np.abs(r) <= delta
  value = np.sum(np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)))
  dr = np.where(small, r, delta * np.sign(r))
  g = weights * dr  # [3, m]
  grad = np.array([g[0].sum(), g[1].sum(), g[2].sum(), -g[0] @ log_n, -g[1] @ log_d])
  return float(value), grad


def _huber_many(thetas: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                delta: float) -> np.ndarray:
  """The objective of `_huber` at each row of thetas (float64 [k, 5]); float64 [k]."""
  values = []
  # Chunks of rows keep the [rows, m] temporaries near 32 MB whatever the grid and the number of runs.
  for chunk in np.array_split(thetas, max(1, len(thetas) * len(log_n) // 4_000_000 + 1)):
    a, b, e, alpha, beta = (chunk[:, i:i + 1] for i in range(5))
    log_pred = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)  # [rows, m]
    r = np.abs(log_pred - log_l)
    values.append(np.sum(np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)), axis=1))
  return np.concatenate(values)


def _params(theta: np.ndarray) -> np.ndarray:
  """(E, A, B, alpha, beta) float64 [..., 5] from theta = (a, b, e, alpha, beta) [..., 5]."""
  a, b, e, alpha, beta = np.moveaxis(theta, -1, 0)
  return np.stack([np.exp(e), np.exp(a), np.exp(b), alpha, beta], axis=-1)


def _derived(params: np.ndarray) -> np.ndarray:
  """(G, a, b) float64 [..., 3] from (E, A, B, alpha, beta) [..., 5]."""
  _, big_a, big_b, alpha, beta = np.moveaxis(params, -1, 0)
  with np.errstate(all="ignore"):
    g = (alpha * big_a / (beta * big_b)) ** (1.0 / (alpha + beta))
    return np.stack([g, beta / (alpha + beta), alpha / (alpha + beta)], axis=-1)


@dataclasses.dataclass(frozen=True)
class ParametricFit:
  """Approach 3: L(N, D) = E + A / N^alpha + B / D^beta (N parameters, D tokens, L in the loss's unit).

  objective: the Huber sum at the optimum. converged: the optimiser's own success flag, or a gradient below
  `grad_tol` when it stopped on a line search the flat Huber tails make harmless. success, message, grad_norm
  (max |gradient| over (a, b, e, alpha, beta)), iterations: of the best start's L-BFGS run. starts: L-BFGS runs made.
  points: runs used; excluded: input indices of runs left out for a non-finite loss; n, d, loss: float64 [points]
  the runs used. bootstrap_params: float64 [k, 5] (E, A, B, alpha, beta) of the bootstrap refits that converged;
  bootstrap_failed: refits that did not. level: the central probability of `intervals`, name -> (low, high) for
  PARAMS and DERIVED (empty without bootstrap).
  """
  E: float
  A: float
  B: float
  alpha: float
  beta: float
  objective: float
  converged: bool
  success: bool
  message: str
  grad_norm: float
  iterations: int
  starts: int
  delta: float
  points: int
  excluded: tuple[int, ...]
  n: np.ndarray
  d: np.ndarray
  loss: np.ndarray
  bootstrap_params: np.ndarray
  bootstrap_failed: int
  level: float
  intervals: dict[str, tuple[float, float]]

  @property
  def params(self) -> np.ndarray:
    """(E, A, B, alpha, beta), float64 [5]."""
    return np.array([self.E, self.A, self.B, self.alpha, self.beta])

  @property
  def G(self) -> float:  # pylint: disable=invalid-name
    return float(_derived(self.params)[0])

  @property
  def a(self) -> float:
    """Exponent of N_opt in C: beta / (alpha + beta)."""
    return float(_derived(self.params)[1])

  @property
  def b(self) -> float:
    """Exponent of D_opt in C: alpha / (alpha + beta)."""
    return float(_derived(self.params)[2])

  def predict(self, n: Any, d: Any) -> np.ndarray:
    """Loss at n parameters and d tokens (float64, broadcast shape)."""
    n, d = np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)
    return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

  def predict_interval(self, n: float, d: float) -> tuple[float, float] | None:
    """The `level` central interval of the bootstrap refits' losses at n parameters and d tokens; None without
    bootstrap refits."""
    if not len(self.bootstrap_params):
      return None
    big_e, big_a, big_b, alpha, beta = self.bootstrap_params.T
    draws = big_e + big_a / n ** alpha + big_b / d ** beta
    low, high = np.nanquantile(draws, _central(self.level))
    return float(low), float(high)

  def to_dict(self) -> dict[str, Any]:
    values = dict(zip(PARAMS + DERIVED, np.concatenate([self.params, _derived(self.params)])))
    return {
        "kind": "parametric", "law": "L(N, D) = E + A / N^alpha + B / D^beta",
        "allocation": "N_opt = G (C/6)^a, D_opt = (C/6)^b / G",
        **{k: _estimate(float(v), self.intervals.get(k)) for k, v in values.items()},
        "level": self.level, "bootstrap": {"fits": len(self.bootstrap_params), "failed": self.bootstrap_failed},
        "objective": self.objective, "huber_delta": self.delta, "converged": self.converged,
        "optimizer": {"success": self.success, "message": self.message, "grad_norm": self.grad_norm,
                      "iterations": self.iterations, "starts": self.starts},
        "points": self.points, "excluded": list(self.excluded)}


def _grid(grid: Mapping[str, Sequence[float]]) -> np.ndarray:
  """All combinations of the grid's values as theta rows, float64 [k, 5]."""
  missing = [k for k in _THETA if k not in grid]
  if missing:
    raise ValueError(f"the initialisation grid needs values for {', '.join(missing)} (has {', '.join(grid)})")
  axes = np.meshgrid(*(np.asarray(grid[k], dtype=np.float64) for k in _THETA), indexing="ij")
  return np.stack([x.ravel() for x in axes], axis=-1)


def _minimize(theta0: np.ndarray, data: tuple[np.ndarray, ...], delta: float, max_iter: int) -> optimize.OptimizeResult:
  # The Huber sum and its gradient scale with delta (~1e-3): under the default absolute gtol (1e-5) starts in one
  # basin stop at visibly different points (alpha differing in the 4th digit); tight tolerances make them agree.
  return optimize.minimize(_huber, theta0, args=(*data, delta), jac=True, method="L-BFGS-B",
                           options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-12})


def fit_parametric(n: Any, d: Any, loss: Any, *, delta: float = HUBER_DELTA,
                   grid: Mapping[str, Sequence[float]] | None = None, max_starts: int | None = 64,
                   bootstrap: int = 0, level: float = 0.9, seed: int = 0, max_iter: int = 2000,
                   grad_tol: float = 1e-6, require_convergence: bool = False) -> ParametricFit:
  """Hoffmann et al. Approach 3: fits L(N, D) = E + A / N^alpha + B / D^beta.

  Minimises sum_i Huber_delta(ln L_pred_i - ln L_i) over a = ln A, b = ln B, e = ln E, alpha, beta with L-BFGS and
  the analytic gradient, from the grid points (default PAPER_GRID, keys a, b, e, alpha, beta) with the lowest
  objective: `max_starts` of them (None: every point, as in the paper; 4500 for PAPER_GRID). The best end wins.

  n: float [m] parameters; d: float [m] training tokens; loss: float [m] final losses (m >= 5 finite).
  bootstrap: refits on runs resampled with replacement (generator seeded by `seed`), each started from the
  full-data optimum; their `level` central percentile intervals cover PARAMS and DERIVED.
  Convergence: a best run that neither succeeds nor ends with max |gradient| <= grad_tol warns with
  ConvergenceWarning, or raises RuntimeError under require_convergence.
  """
  runs = _runs(loss, len(PARAMS), f"the parametric law ({len(PARAMS)} parameters: {', '.join(PARAMS)})", n=n, d=d)
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1); got {level}")
  if bootstrap < 0:
    raise ValueError(f"bootstrap must be >= 0; got {bootstrap}")
  if max_starts is not None and max_starts < 1:
    raise ValueError(f"max_starts must be >= 1 or None; got {max_starts}")
  starts = _grid(PAPER_GRID if grid is None else grid)
  # L-BFGS on 5 variables makes thousands of tiny BLAS calls; with OpenBLAS threads each one waits on a thread
  # hand-off, which made fits ~10x slower on a busy 2-core machine.
  with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
    return _fit_parametric(runs, delta, starts, max_starts, bootstrap, level, seed, max_iter, grad_tol,
                           require_convergence)


def _fit_parametric(runs: _Runs, delta: float, starts: np.ndarray, max_starts: int | None, bootstrap: int,
                    level: float, seed: int, max_iter: int, grad_tol: float,
                    require_convergence: bool) -> ParametricFit:
  ns, ds, ls = runs.columns["n"], runs.columns["d"], runs.columns["loss"]
  data = (np.log(ns), np.log(ds), np.log(ls))
  if max_starts is not None and max_starts < len(starts):
    # Ranking the grid by its objective costs one vectorised pass; L-BFGS from the poor starts almost never wins.
    starts = starts[np.argsort(_huber_many(starts, *data, delta), kind="stable")[:max_starts]]
  best = None
  for theta0 in starts:
    result = _minimize(theta0, data, delta, max_iter)
    if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
      best = result
  if best is None:
    raise RuntimeError("every L-BFGS start ended with a non-finite objective")
  grad_norm = float(np.max(np.abs(best.jac)))
  converged = bool(best.success) or grad_norm <= grad_tol
  if not converged:
    text = (f"the parametric fit's best start did not converge: {best.message} after {best.nit} iterations, "
            f"max |gradient| {grad_norm:.3g} > {grad_tol:.3g}")
    if require_convergence:
      raise RuntimeError(text)
    warnings.warn(text, ConvergenceWarning, stacklevel=3)

  samples, failed = [], 0
  if bootstrap:
    rng = np.random.default_rng(seed)
    m = len(ls)
    for _ in range(bootstrap):
      pick = rng.integers(0, m, size=m)
      result = _minimize(best.x, tuple(x[pick] for x in data), delta, max_iter)
      ok = np.isfinite(result.fun) and (result.success or np.max(np.abs(result.jac)) <= grad_tol)
      if ok:
        samples.append(result.x)
      else:
        failed += 1
    if failed:
      warnings.warn(f"{failed} of {bootstrap} bootstrap refits did not converge and are left out of the intervals",
                    ConvergenceWarning, stacklevel=3)
  bootstrap_params = _params(np.array(samples).reshape(-1, 5))
  intervals = {}
  if len(bootstrap_params):
    q = _central(level)
    values = np.concatenate([bootstrap_params, _derived(bootstrap_params)], axis=1)
    lows, highs = np.nanquantile(values, q, axis=0)
    intervals = {k: (float(lo), float(hi)) for k, lo, hi in zip(PARAMS + DERIVED, lows, highs)}

  e_, a_, b_, alpha, beta = (float(v) for v in _params(best.x))
  return ParametricFit(
      E=e_, A=a_, B=b_, alpha=alpha, beta=beta, objective=float(best.fun), converged=converged,
      success=bool(best.success), message=str(best.message), grad_norm=grad_norm, iterations=int(best.nit),
      starts=len(starts), delta=delta, points=len(ls), excluded=runs.excluded, n=ns, d=ds, loss=ls,
      bootstrap_params=bootstrap_params, bootstrap_failed=failed, level=level, intervals=intervals)


# ----------------------------------------------------------------------------------------------------------------
# Compute-optimal allocation from the parametric law.


@dataclasses.dataclass(frozen=True)
class Allocation:
  """The compute-optimal model of a parametric law at `compute` FLOPs (C = 6 N D).

  n_opt: parameters; d_opt: tokens; tokens_per_parameter: d_opt / n_opt; loss: the law's loss there.
  intervals: name -> (low, high) at `level` from the fit's bootstrap refits (empty without them).
  """
  compute: float
  n_opt: float
  d_opt: float
  tokens_per_parameter: float
  loss: float
  level: float
  intervals: dict[str, tuple[float, float]]

  def to_dict(self) -> dict[str, Any]:
    names = ("n_opt", "d_opt", "tokens_per_parameter", "loss")
    return {"kind": "allocation", "compute": self.compute, "level": self.level,
            **{k: _estimate(getattr(self, k), self.intervals.get(k)) for k in names}}


def _allocate(params: np.ndarray, compute: np.ndarray) -> np.ndarray:
  """(n_opt, d_opt, tokens per parameter, loss) float64 [..., 4] for params [..., 5] at compute FLOPs (broadcast)."""
  big_e, big_a, big_b, alpha, beta = np.moveaxis(params, -1, 0)
  g, a, b = np.moveaxis(_derived(params), -1, 0)
  scaled = compute / FLOPS_PER_PARAM_TOKEN
  with np.errstate(all="ignore"):
    n_opt = g * scaled ** a
    d_opt = scaled ** b / g
    loss = big_e + big_a / n_opt ** alpha + big_b / d_opt ** beta
    return np.stack([n_opt, d_opt, d_opt / n_opt, loss], axis=-1)


def compute_optimal(fit: ParametricFit, compute: float) -> Allocation:
  """The minimiser of L(N, D) on 6 N D = C, `compute` C in FLOPs, with intervals from the fit's bootstrap refits:
    N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta)).
  """
  if not (math.isfinite(compute) and compute > 0):
    raise ValueError(f"compute must be a finite positive number of FLOPs; got {compute}")
  names = ("n_opt", "d_opt", "tokens_per_parameter", "loss")
  values = _allocate(fit.params, compute)
  intervals = {}
  if len(fit.bootstrap_params):
    lows, highs = np.nanquantile(_allocate(fit.bootstrap_params, compute), _central(fit.level), axis=0)
    intervals = {k: (float(lo), float(hi)) for k, lo, hi in zip(names, lows, highs)}
  return Allocation(float(compute), *(float(v) for v in values), fit.level, intervals)


# ----------------------------------------------------------------------------------------------------------------
# Output.

Result = PowerLawFit | IsoflopFit | ParametricFit | Allocation


def to_json(result: Result | Mapping[str, Result], *, indent: int | None = 2) -> str:
  """JSON text of a result, or of a mapping name -> result: the fitted constants, each estimate of a parametric fit
  or an allocation as {"value", "low", "high"} (null bounds without bootstrap), and the runs excluded or refused.
  Non-finite numbers are written as null."""
  if isinstance(result, Mapping):
    value = {k: v.to_dict() for k, v in result.items()}
  else:
    value = result.to_dict()
  return json.dumps(_nonfinite_to_none(value), indent=indent, allow_nan=False)


def _compute_span(isoflop: IsoflopFit | None, parametric: ParametricFit | None,
                  extend_to: float | None) -> np.ndarray:
  """float64 [200] log-spaced FLOPs spanning the runs' budgets (and `extend_to`)."""
  budgets = []
  if isoflop is not None:
    budgets += [b.compute for b in isoflop.budgets]
  if parametric is not None:
    budgets += (FLOPS_PER_PARAM_TOKEN * parametric.n * parametric.d).tolist()
  if extend_to is not None:
    budgets.append(extend_to)
  low, high = math.log10(min(budgets)), math.log10(max(budgets))
  return np.logspace(low - 0.1, high + 0.1, 200)


def _plot_isoflops(fig, isoflop: IsoflopFit, parametric: ParametricFit | None) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  ax = fig.add_subplot()
  colormap = matplotlib.colormaps["viridis"]
  count = len(isoflop.budgets)
  for i, budget in enumerate(isoflop.budgets):
    color = colormap(i / max(count - 1, 1))
    low, high = math.log10(min(budget.n.min(), budget.n_opt)), math.log10(max(budget.n.max(), budget.n_opt))
    grid = np.logspace(low - 0.05, high + 0.05, 100)
    ax.plot(budget.n, budget.loss, "o", color=color, markersize=4, label=budget.name)
    ax.plot(grid, budget.predict(grid), "-", color=color, linewidth=1)
    if parametric is not None:
      ax.plot(grid, parametric.predict(grid, budget.compute / (FLOPS_PER_PARAM_TOKEN * grid)), ":", color=color,
              linewidth=1)
    ax.plot([budget.n_opt], [budget.loss_opt], "*", color=color, markersize=11, markeredgecolor="black")
  ax.set_xscale("log")
  ax.set_xlabel("parameters N")
  ax.set_ylabel("final loss")
  title = "IsoFLOP curves: parabolas in ln N and their minima (*)"
  ax.set_title(title + (", dotted: parametric law" if parametric is not None else ""), fontsize=10)
  ax.grid(True, alpha=0.3, which="both")
  ax.legend(fontsize=7, ncol=2)


def _plot_frontier(fig, isoflop: IsoflopFit | None, parametric: ParametricFit | None,
                   extend_to: float | None) -> None:
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  compute = _compute_span(isoflop, parametric, extend_to)
  axes = fig.subplots(1, 2)
  for ax, which, label in ((axes[0], 0, "parameters N_opt"), (axes[1], 1, "tokens D_opt")):
    if isoflop is not None:
      runs_c = np.concatenate([np.full(len(b.n), b.compute) for b in isoflop.budgets])
      runs_n = np.concatenate([b.n for b in isoflop.budgets])
      runs_y = runs_n if which == 0 else runs_c / (FLOPS_PER_PARAM_TOKEN * runs_n)
      ax.plot(runs_c, runs_y, ".", color="0.7", markersize=3, label="runs")
      minima = [b.n_opt if which == 0 else b.d_opt for b in isoflop.budgets]
      ax.plot([b.compute for b in isoflop.budgets], minima, "o", color="tab:blue", label="IsoFLOP minima")
      exponent = isoflop.n_exponent if which == 0 else isoflop.d_exponent
      ax.plot(compute, isoflop.n_opt(compute) if which == 0 else isoflop.d_opt(compute), "-", color="tab:blue",
              label=f"Approach 2: C^{exponent:.3f}")
    if parametric is not None:
      values = _allocate(parametric.params, compute)[:, which]
      exponent = parametric.a if which == 0 else parametric.b
      ax.plot(compute, values, "--", color="tab:red", label=f"Approach 3: C^{exponent:.3f}")
      if len(parametric.bootstrap_params):
        q = _central(parametric.level)
        band = np.nanquantile(_allocate(parametric.bootstrap_params[:, None, :], compute)[..., which], q, axis=0)
        ax.fill_between(compute, band[0], band[1], color="tab:red", alpha=0.15,
                        label=f"{parametric.level:.0%} bootstrap")
    if extend_to is not None:
      ax.axvline(extend_to, color="0.4", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Within one decade matplotlib labels the minor ticks too, and on a half-width panel they overlap.
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("Compute-optimal frontier", fontsize=10)


def plot(out_dir: str, *, isoflop: IsoflopFit | None = None, parametric: ParametricFit | None = None,
         extend_to: float | None = None) -> list[str]:
  """Writes PNGs of the fits into `out_dir` (created if needed) and returns their paths:
    isoflops.png  loss vs N per budget: the runs, each parabola and its minimum (needs `isoflop`), with the
                  parametric law along each IsoFLOP when `parametric` is given;
    frontier.png  N_opt(C) and D_opt(C): the runs, the IsoFLOP minima and their power law, the parametric frontier
                  with its bootstrap band; drawn out to `extend_to` FLOPs (marked) when given.
  Each is 800x450 pixels."""
  if isoflop is None and parametric is None:
    raise ValueError("plot needs an IsoFLOP fit, a parametric fit or both")
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  os.makedirs(out_dir, exist_ok=True)
  written = []
  drawings = [("frontier.png", lambda fig: _plot_frontier(fig, isoflop, parametric, extend_to))]
  if isoflop is not None:
    drawings.insert(0, ("isoflops.png", lambda fig: _plot_isoflops(fig, isoflop, parametric)))
  for filename, draw in drawings:
    # A bare Figure (not pyplot) keeps no global state between calls.
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    draw(fig)
    path = os.path.join(out_dir, filename)
    fig.savefig(path, dpi=DPI)
    written.append(path)
  return written
