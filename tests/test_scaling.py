"""lm.scaling on synthetic runs drawn from published scaling laws: recovery, allocation, input checks and output."""

import json
import math
import warnings

import numpy as np
import pytest

from lm import scaling

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (E, A, B, alpha, beta): Hoffmann et al. (2022) Approach 3, and the refit of Besiroglu et al. (2024) to the same runs
# (unrounded: rounded to 0.35 / 0.37 the exponents move the tokens per parameter at GOPHER_COMPUTE from 18 to 16).
CHINCHILLA = (1.69, 406.4, 410.7, 0.34, 0.28)
BESIROGLU = (1.8172, 482.01, 2085.43, 0.3478, 0.3658)
LAWS = {"chinchilla": CHINCHILLA, "besiroglu": BESIROGLU}
GOPHER_COMPUTE = 5.76e23
BUDGETS = np.logspace(np.log10(6e18), np.log10(3e21), 9)
SIZES_PER_BUDGET = 9
NOISE = 0.01
# At 1% noise one run per (budget, size) recovers alpha within 0.03 for only ~70% of noise draws, and the tokens per
# parameter at GOPHER_COMPUTE (two decades past the largest budget) within 25% for ~50%; nine seeds per
# configuration bring every tolerance below to >= 90% of draws, so the fixed draw here is not a lucky one.
SEEDS_PER_RUN = 9
BOOTSTRAP = 30


def flops(n, d):
  return scaling.FLOPS_PER_PARAM_TOKEN * n * d


def true_fit(law):
  """A ParametricFit holding the exact law, to get its allocation through the same code path."""
  empty = np.zeros(0)
  return scaling.ParametricFit(*law, objective=0.0, converged=True, success=True, message="", grad_norm=0.0,
                               iterations=0, starts=0, delta=scaling.HUBER_DELTA, points=0, excluded=(), n=empty,
                               d=empty, loss=empty, bootstrap_params=np.zeros((0, 5)), bootstrap_failed=0,
                               level=0.9, intervals={})


def synthetic(law, seed=0, noise=NOISE, seeds_per_run=SEEDS_PER_RUN):
  """IsoFLOP runs like the paper's: per budget, sizes log-spaced over 1/8..8x the 20-tokens-per-parameter model
  (within 70M..16B), D = C / (6N), loss from `law` times (1 + noise * standard normal).
  Returns float64 [m] arrays (n, d, loss, compute)."""
  n, c = [], []
  for budget in BUDGETS:
    center = math.sqrt(budget / (6 * 20))
    sizes = np.logspace(math.log10(max(7e7, center / 8)), math.log10(min(1.6e10, center * 8)), SIZES_PER_BUDGET)
    n.append(np.repeat(sizes, seeds_per_run))
    c.append(np.full(len(sizes) * seeds_per_run, budget))
  n, c = np.concatenate(n), np.concatenate(c)
  d = c / (6 * n)
  rng = np.random.default_rng(seed)
  loss = true_fit(law).predict(n, d) * (1 + noise * rng.standard_normal(len(n)))
  return n, d, loss, c


@pytest.fixture(scope="module", params=sorted(LAWS))
def fitted(request):
  """(law, data, Approach-3 fit with bootstrap) per published law."""
  law = LAWS[request.param]
  data = synthetic(law)
  n, d, loss, _ = data
  return law, data, scaling.fit_parametric(n, d, loss, bootstrap=BOOTSTRAP, seed=1)


def test_parametric_recovers_published_law(fitted):
  law, _, fit = fitted
  assert fit.converged and fit.success, fit.message
  assert fit.grad_norm < 1e-6
  assert fit.alpha == pytest.approx(law[3], abs=0.03)
  assert fit.beta == pytest.approx(law[4], abs=0.03)
  assert fit.E == pytest.approx(law[0], abs=0.05)
  expected = scaling.compute_optimal(true_fit(law), GOPHER_COMPUTE).tokens_per_parameter
  got = scaling.compute_optimal(fit, GOPHER_COMPUTE).tokens_per_parameter
  assert got == pytest.approx(expected, rel=0.25)


def test_besiroglu_allocation_is_about_20_tokens_per_parameter():
  allocation = scaling.compute_optimal(true_fit(BESIROGLU), GOPHER_COMPUTE)
  assert 15 <= allocation.tokens_per_parameter <= 30
  n, d, loss, _ = synthetic(BESIROGLU)
  fit = scaling.fit_parametric(n, d, loss, max_starts=16)
  got = scaling.compute_optimal(fit, GOPHER_COMPUTE).tokens_per_parameter
  assert 15 <= got <= 30
  assert got == pytest.approx(allocation.tokens_per_parameter, rel=0.25)


def test_allocation_minimises_loss_on_its_budget():
  law = true_fit(CHINCHILLA)
  allocation = scaling.compute_optimal(law, GOPHER_COMPUTE)
  assert flops(allocation.n_opt, allocation.d_opt) == pytest.approx(GOPHER_COMPUTE, rel=1e-9)
  assert allocation.tokens_per_parameter == pytest.approx(allocation.d_opt / allocation.n_opt)
  assert allocation.loss == pytest.approx(law.predict(allocation.n_opt, allocation.d_opt))
  n = allocation.n_opt * np.logspace(-0.5, 0.5, 101)
  losses = law.predict(n, GOPHER_COMPUTE / (6 * n))
  assert np.argmin(losses) == 50
  assert law.a == pytest.approx(0.28 / 0.62) and law.b == pytest.approx(0.34 / 0.62)


def test_bootstrap_intervals(fitted):
  law, _, fit = fitted
  assert fit.bootstrap_failed == 0 and fit.bootstrap_params.shape == (BOOTSTRAP, 5)
  for name in scaling.PARAMS + scaling.DERIVED:
    low, high = fit.intervals[name]
    assert math.isfinite(low) and math.isfinite(high), name
    assert low <= high, name
  # 90% intervals: with this draw both contain the truth (over draws, both do about 4 times in 5).
  for name, true in (("alpha", law[3]), ("beta", law[4])):
    low, high = fit.intervals[name]
    assert low <= true <= high, (name, low, high)
  allocation = scaling.compute_optimal(fit, GOPHER_COMPUTE)
  for name in ("n_opt", "d_opt", "tokens_per_parameter", "loss"):
    low, high = allocation.intervals[name]
    assert 0 < low <= high, name


@pytest.mark.parametrize("name", sorted(LAWS))
def test_isoflops_exponents(name):
  law = LAWS[name]
  n, d, loss, _ = synthetic(law)
  fit = scaling.fit_isoflops(n, d, loss)
  assert len(fit.budgets) == len(BUDGETS) and not fit.refused
  assert [b.compute for b in fit.budgets] == pytest.approx(BUDGETS, rel=1e-9)
  assert not any(b.extrapolated for b in fit.budgets)
  assert fit.n_exponent == pytest.approx(law[4] / (law[3] + law[4]), abs=0.05)
  # D_opt = C / (6 N_opt) on every budget, so the exponents add up to 1.
  assert fit.n_exponent + fit.d_exponent == pytest.approx(1.0)
  for budget in fit.budgets:
    assert flops(budget.n_opt, budget.d_opt) == pytest.approx(budget.compute)


def test_isoflop_bootstrap_intervals_contain_the_estimates_and_the_true_exponent():
  law = CHINCHILLA
  n, d, loss, c = synthetic(law, seeds_per_run=1)
  fit = scaling.fit_isoflops(n, d, loss, bootstrap=100, seed=1)
  assert fit.bootstrap_fits + fit.bootstrap_failed == 100 and fit.bootstrap_fits >= 90
  for name, value in (("a", fit.n_exponent), ("b", fit.d_exponent), ("G", fit.n_coefficient),
                      ("G_prime", fit.d_coefficient)):
    low, high = fit.intervals[name]
    assert low < value < high, name
  low, high = fit.intervals["a"]
  assert low <= law[4] / (law[3] + law[4]) <= high and high - low < 0.2
  for budget in fit.budgets:
    low, high = fit.intervals["n_opt:" + budget.name]
    assert low < budget.n_opt < high
  value = json.loads(scaling.to_json(fit))
  assert value["a"]["low"] == pytest.approx(fit.intervals["a"][0]) and value["bootstrap"]["fits"] == fit.bootstrap_fits
  assert value["budgets"][0]["n_opt"]["high"] == pytest.approx(fit.intervals["n_opt:" + fit.budgets[0].name][1])
  # Three sizes per budget: each parabola fits its runs exactly, no residuals to resample, no intervals.
  three = np.concatenate([np.flatnonzero(c == budget)[:3] for budget in BUDGETS])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # budgets refused or extrapolated: not what this checks
    exact = scaling.fit_isoflops(n[three], d[three], loss[three], bootstrap=20)
  assert exact.intervals == {} and exact.bootstrap_fits == 0
  with pytest.raises(ValueError, match="bootstrap must be >= 0"):
    scaling.fit_isoflops(n, d, loss, bootstrap=-1)


def test_power_law_recovers_kaplan_exactly():
  n = np.logspace(6, 10, 7)
  fit = scaling.fit_power_law(n, (8.8e13 / n) ** 0.076, variable="N")
  assert fit.exponent == pytest.approx(0.076, rel=1e-9)
  assert fit.scale == pytest.approx(8.8e13, rel=1e-6)
  assert fit.r2 == pytest.approx(1.0)
  d = np.logspace(8, 11, 5)
  fit = scaling.fit_power_law(d, (5.4e13 / d) ** 0.095, variable="D")
  assert fit.exponent == pytest.approx(0.095, rel=1e-9)
  assert fit.scale == pytest.approx(5.4e13, rel=1e-6)
  assert fit.predict(1e9) == pytest.approx((5.4e13 / 1e9) ** 0.095)
  assert json.loads(scaling.to_json(fit))["D_c"] == pytest.approx(5.4e13, rel=1e-6)


def test_too_few_points_names_the_count_needed():
  n, d, loss, _ = synthetic(CHINCHILLA, seeds_per_run=1)
  with pytest.raises(ValueError, match="at least 5 runs"):
    scaling.fit_parametric(n[:4], d[:4], loss[:4])
  loss = loss[:6].copy()
  loss[2] = np.nan
  loss[4] = np.inf
  with pytest.raises(ValueError, match=r"at least 5 runs .* got 4; 2 excluded .*\(run index 2, 4\)"):
    scaling.fit_parametric(n[:6], d[:6], loss)
  with pytest.raises(ValueError, match="at least 2 runs"):
    scaling.fit_power_law([1e8, 2e8], [3.0, np.nan])


def test_diverged_runs_are_excluded_and_listed():
  n, d, loss, _ = synthetic(CHINCHILLA, seeds_per_run=1)
  loss = loss.copy()
  loss[[3, 40]] = [np.nan, np.inf]
  fit = scaling.fit_parametric(n, d, loss, max_starts=8)
  assert fit.excluded == (3, 40) and fit.points == len(n) - 2
  assert np.isfinite(fit.params).all() and fit.converged
  assert json.loads(scaling.to_json(fit))["excluded"] == [3, 40]
  isoflop = scaling.fit_isoflops(n, d, loss)
  assert isoflop.excluded == (3, 40)
  assert sum(len(b.n) for b in isoflop.budgets) == len(n) - 2
  assert scaling.fit_power_law(n, loss).excluded == (3, 40)


@pytest.mark.parametrize("column, value, pattern", [
    ("n", 0.0, "n must be finite and positive; not so at run index 5"),
    ("d", np.nan, "d must be finite and positive; not so at run index 5"),
    ("loss", -1.0, "loss must be positive; not so at run index 5"),
])
def test_invalid_values_are_refused(column, value, pattern):
  n, d, loss, _ = synthetic(CHINCHILLA, seeds_per_run=1)
  columns = {"n": n.copy(), "d": d.copy(), "loss": loss.copy()}
  columns[column][5] = value
  with pytest.raises(ValueError, match=pattern):
    scaling.fit_parametric(**columns)
  with pytest.raises(ValueError, match=pattern):
    scaling.fit_isoflops(**columns)


def test_mismatched_lengths_are_refused():
  with pytest.raises(ValueError, match="one entry per run"):
    scaling.fit_parametric(np.ones(6), np.ones(5), np.ones(6))


def test_budget_with_two_sizes_is_refused_by_name():
  n, d, loss, c = synthetic(CHINCHILLA, seeds_per_run=1)
  extra_n = np.array([5e9, 1e10])
  extra_c = np.full(2, 1e22)
  n, c = np.concatenate([n, extra_n]), np.concatenate([c, extra_c])
  d = c / (6 * n)
  loss = np.concatenate([loss, [2.0, 2.0]])
  with pytest.warns(RuntimeWarning, match=r"C=1e\+22: 2 distinct model sizes"):
    fit = scaling.fit_isoflops(n, d, loss, compute=c)
  assert list(fit.refused) == ["C=1e+22"] and "at least 3" in fit.refused["C=1e+22"]
  assert len(fit.budgets) == len(BUDGETS)
  assert json.loads(scaling.to_json(fit))["refused"] == fit.refused
  # No budget with 3 sizes: the whole fit is refused, naming each budget.
  with pytest.raises(ValueError, match=r"got 0 \(none\).*C=1e\+22: 2 distinct.*C=3e\+22: 2 distinct"), \
      pytest.warns(RuntimeWarning):
    scaling.fit_isoflops([1e9, 2e9, 1e9, 2e9], [1e12] * 4, [2.5, 2.4, 2.3, 2.2], compute=[1e22, 1e22, 3e22, 3e22])


def test_convergence_is_checked():
  n, d, loss, _ = synthetic(CHINCHILLA, seeds_per_run=1)
  with pytest.warns(scaling.ConvergenceWarning, match="did not converge"):
    fit = scaling.fit_parametric(n, d, loss, max_starts=2, max_iter=2)
  assert not fit.converged and not fit.success and fit.grad_norm > 1e-6
  with pytest.raises(RuntimeError, match="did not converge"):
    scaling.fit_parametric(n, d, loss, max_starts=2, max_iter=2, require_convergence=True)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert scaling.fit_parametric(n, d, loss, max_starts=4).converged


def test_every_grid_start_runs_without_max_starts():
  n, d, loss, _ = synthetic(CHINCHILLA, seeds_per_run=1, noise=0.0)
  grid = {"alpha": (0.0, 0.5), "beta": (0.0, 0.5), "e": (0.0,), "a": (5.0, 10.0), "b": (5.0, 10.0)}
  fit = scaling.fit_parametric(n, d, loss, grid=grid, max_starts=None)
  assert fit.starts == 16 and fit.converged
  assert fit.params == pytest.approx(np.array(CHINCHILLA), rel=1e-3)
  with pytest.raises(ValueError, match="needs values for e"):
    scaling.fit_parametric(n, d, loss, grid={k: v for k, v in grid.items() if k != "e"})


def test_to_json(fitted):
  law, _, fit = fitted
  allocation = scaling.compute_optimal(fit, GOPHER_COMPUTE)
  value = json.loads(scaling.to_json({"approach3": fit, "gopher": allocation}))
  for name in scaling.PARAMS + scaling.DERIVED:
    estimate = value["approach3"][name]
    assert estimate["low"] <= estimate["value"] <= estimate["high"], name
  assert value["approach3"]["alpha"]["value"] == pytest.approx(fit.alpha)
  assert value["approach3"]["converged"] is True and value["approach3"]["bootstrap"]["fits"] == BOOTSTRAP
  assert value["gopher"]["tokens_per_parameter"]["value"] == pytest.approx(allocation.tokens_per_parameter)
  bare = json.loads(scaling.to_json(true_fit(law)))
  assert bare["E"] == {"value": law[0], "low": None, "high": None}


@pytest.mark.parametrize("fitted", ["chinchilla"], indirect=True)
def test_plot_writes_pngs(tmp_path, fitted):
  _, (n, d, loss, _), fit = fitted
  isoflop = scaling.fit_isoflops(n, d, loss)
  paths = scaling.plot(str(tmp_path / "plots"), isoflop=isoflop, parametric=fit, extend_to=GOPHER_COMPUTE)
  assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["frontier.png", "isoflops.png"]
  for path in paths:
    with open(path, "rb") as f:
      content = f.read()
    assert content.startswith(PNG_SIGNATURE) and len(content) > 10_000, path
  assert scaling.plot(str(tmp_path / "only3"), parametric=fit)[0].endswith("frontier.png")
  with pytest.raises(ValueError, match="needs an IsoFLOP fit"):
    scaling.plot(str(tmp_path / "none"))
