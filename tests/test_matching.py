# Copyright 2026 The modeling_croc Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Tests for prompt-pool matching: exact Hungarian assignment and the official nearest-row matcher."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment


def load_standalone_matching():
    """matching.py is copied alone into Hub repos (trust_remote_code): test it without the package."""
    path = Path(__file__).resolve().parents[1] / "modeling_croc" / "matching.py"
    spec = importlib.util.spec_from_file_location("croc_matching_standalone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


matching = load_standalone_matching()
MATCHING_METHODS = matching.MATCHING_METHODS
hungarian_assignment = matching.hungarian_assignment
match_prompt_pool = matching.match_prompt_pool
pairwise_distances = matching.pairwise_distances

# ---------------------------------------------------------------------------------------------
# helpers


def total_cost(costs: np.ndarray, cols: np.ndarray) -> float:
    """Sum of costs[i, cols[i]] in float64."""
    return float(costs.astype(np.float64)[np.arange(len(cols)), cols].sum())


def scipy_total(costs: np.ndarray) -> float:
    rows, cols = linear_sum_assignment(costs.astype(np.float64))
    return total_cost(costs, cols)


def assert_optimal(costs: np.ndarray, cols: np.ndarray):
    """cols [n] is one-to-one and has scipy's minimum total on costs [n, m]."""
    n, m = costs.shape
    assert cols.shape == (n,)
    assert len(np.unique(cols)) == n, "assignment is not one-to-one"
    assert cols.min(initial=0) >= 0 and cols.max(initial=0) < max(m, 1)
    ours, best = total_cost(costs, cols), scipy_total(costs)
    assert ours == pytest.approx(best, rel=1e-12, abs=1e-12)


def init_like(num_images, num_replaced, pool_size, hidden, seed):
    """Unit-norm queries against an N(0, 1) pool, as at Croc's initialisation."""
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(num_images, num_replaced, hidden, generator=g)
    queries = queries / queries.norm(dim=-1, keepdim=True)
    return queries, torch.randn(pool_size, hidden, generator=g)


def trained_like(num_images, num_replaced, pool_size, hidden, seed):
    """Clustered unit queries against small-norm pool rows near the same cluster centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(64, hidden, generator=g), dim=-1)
    queries = centres[torch.randint(0, 64, (num_images, num_replaced), generator=g)]
    queries = torch.nn.functional.normalize(queries + torch.randn(queries.shape, generator=g) / hidden**0.5, dim=-1)
    pool = centres[torch.randint(0, 64, (pool_size,), generator=g)] + torch.randn(pool_size, hidden, generator=g) / hidden**0.5
    return queries, 0.5 * torch.nn.functional.normalize(pool, dim=-1)


# ---------------------------------------------------------------------------------------------
# exactness of the assignment


@st.composite
def cost_problems(draw):
    """[num_images, rows, cols] costs, rows <= cols, in several regimes including heavy ties."""
    num_images = draw(st.integers(1, 3))
    rows = draw(st.integers(0, 14))
    cols = draw(st.integers(max(rows, 1), 40))
    regime = draw(st.sampled_from(["small_ints", "uniform", "column_dominated", "duplicates", "constant"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (num_images, rows, cols)
    if regime == "small_ints":  # many ties
        costs = rng.integers(0, 4, shape).astype(np.float32)
    elif regime == "uniform":  # nearly uniform costs
        costs = (1.0 + 1e-3 * rng.random(shape)).astype(np.float32)
    elif regime == "column_dominated":  # like squared-norm-dominated distances
        costs = (rng.normal(64, 0.7, (num_images, 1, cols)) + 0.016 * rng.normal(size=shape)).astype(np.float32)
    elif regime == "duplicates":  # repeated rows and columns
        base = rng.random((num_images, max(rows, 1), max(cols // 2, 1))).astype(np.float32)
        costs = base[:, rng.integers(0, base.shape[1], rows)][:, :, rng.integers(0, base.shape[2], cols)]
    else:
        costs = np.full(shape, 2.5, dtype=np.float32)
    return np.ascontiguousarray(costs)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cost_problems())
def test_hungarian_assignment_is_exact(costs):
    cols = hungarian_assignment(costs)
    assert cols.dtype == np.int64 and cols.shape == costs.shape[:2]
    for c, col in zip(costs, cols):
        assert_optimal(c, col)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cost_problems(), st.integers(1, 6), st.sampled_from([0.0, 0.5, 2.0]))
def test_candidate_solver_is_exact(costs, stride, reach):
    """The restricted solve + certificate path, forced even on tiny problems and tiny candidate sets."""
    for c in costs:
        if c.shape[0] == 0:
            continue
        assert_optimal(c, matching._solve_with_candidates(c, stride=stride, reach=reach))


@pytest.mark.parametrize("regime", [init_like, trained_like])
@pytest.mark.parametrize("size", [(4, 40, 120, 32), (3, 60, 64, 16)])
def test_hungarian_on_distances_threaded(regime, size, monkeypatch):
    """Distance matrices of both pool regimes, through the threaded candidate path."""
    monkeypatch.setattr(matching, "_DIRECT_BELOW", 0)
    costs = pairwise_distances(*regime(*size, seed=sum(size))).numpy()
    cols = hungarian_assignment(costs)
    for c, col in zip(costs, cols):
        assert_optimal(c, col)


@pytest.mark.parametrize("regime, num_images", [(init_like, 2), (trained_like, 1)])
def test_hungarian_real_size(regime, num_images):
    """432 replaced tokens against a 2048-row pool, 4096-d, as in Croc."""
    costs = pairwise_distances(*regime(num_images, 432, 2048, 4096, seed=7)).numpy()
    cols = hungarian_assignment(costs)
    for c, col in zip(costs, cols):
        assert_optimal(c, col)


def test_certificate_failure_enlarges_candidates(monkeypatch):
    """Optimal columns with a high mean cost are missed at first; the certificate must bring them in."""
    rng = np.random.default_rng(0)
    costs = 1.0 + 0.01 * rng.random((3, 40))  # ordinary columns cost ~1
    costs[:, 0] = 0.0  # one free column everybody likes (every row's cheapest)
    costs[:, 30:] = 50.0  # columns 30..39 look bad on average...
    costs[1, 33] = costs[2, 35] = 0.1  # ...but two are nearly free for one row each
    rounds = []
    certify = matching._improving_exits
    monkeypatch.setattr(matching, "_improving_exits", lambda *a: rounds.append(1) or certify(*a))
    cols = matching._solve_with_candidates(costs.astype(np.float32), stride=64, reach=0.0)
    assert_optimal(costs.astype(np.float32), cols)
    assert total_cost(costs, cols) == pytest.approx(0.2)  # row 0 takes column 0
    assert len(rounds) >= 2


def test_certificate_detects_suboptimal_assignments():
    costs = np.array([[1.0, 5.0, 9.0], [3.0, 2.0, 9.0]])
    assert matching._improving_exits(costs, np.array([0, 1]), 1e-12).size == 0  # optimal (total 3)
    assert matching._improving_exits(costs, np.array([1, 0]), 1e-12) is None  # swapping back gains 5
    costs = np.array([[1.0, 5.0, 0.5], [3.0, 2.0, 9.0]])
    assert list(matching._improving_exits(costs, np.array([0, 1]), 1e-12)) == [2]  # chain into column 2


def test_hungarian_accepts_torch_and_float64():
    costs = torch.rand(2, 5, 9, dtype=torch.float64)
    cols = hungarian_assignment(costs)
    for c, col in zip(costs.numpy(), cols):
        assert_optimal(c, col)


def test_hungarian_rejects_bad_costs():
    with pytest.raises(ValueError, match="rows <= cols"):
        hungarian_assignment(np.zeros((1, 5, 4)))
    with pytest.raises(ValueError, match="finite"):
        hungarian_assignment(np.full((1, 2, 3), np.nan))
    with pytest.raises(ValueError, match="num_images"):
        hungarian_assignment(np.zeros((5, 4)))


# ---------------------------------------------------------------------------------------------
# match_prompt_pool


def test_match_hungarian_is_one_to_one_and_optimal():
    queries, pool = init_like(2, 24, 80, 64, seed=1)
    rows = match_prompt_pool(queries, pool, "hungarian")
    assert rows.dtype == torch.int64 and rows.shape == (2, 24)
    costs = pairwise_distances(queries, pool).numpy()
    for c, r in zip(costs, rows.numpy()):
        assert_optimal(c, r)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nearest_reproduces_official_cdist_argmin(dtype):
    queries, pool = init_like(3, 50, 200, 64, seed=2)
    queries, pool = queries.to(dtype), pool.to(dtype)
    rows = match_prompt_pool(queries, pool, "nearest")
    official = torch.stack([torch.cdist(q, pool).argmin(-1) for q in queries])  # per sample, training dtype
    assert rows.dtype == torch.int64
    assert torch.equal(rows, official)


def test_nearest_collapses_at_init_but_hungarian_does_not():
    """Doc claim (spec 3.2): at init every replaced token picks the same, smallest-norm pool row."""
    queries, pool = init_like(1, 432, 2048, 4096, seed=3)
    nearest = match_prompt_pool(queries, pool, "nearest")[0]
    assert len(torch.unique(nearest)) <= 2
    assert pool.norm(dim=-1).argmin() in nearest
    hungarian = match_prompt_pool(queries, pool, "hungarian")[0]
    assert len(torch.unique(hungarian)) == 432


def test_errors_name_the_numbers_and_methods():
    queries, pool = init_like(1, 10, 6, 8, seed=4)
    with pytest.raises(ValueError, match=r"6 rows.*10 tokens"):
        match_prompt_pool(queries, pool, "hungarian")
    match_prompt_pool(queries, pool, "nearest")  # many-to-one needs no size condition
    with pytest.raises(ValueError, match="hungarian, nearest"):
        match_prompt_pool(queries, pool, "greedy")
    assert MATCHING_METHODS == ("hungarian", "nearest")


@pytest.mark.parametrize("method", MATCHING_METHODS)
def test_no_gradient_flows(method):
    queries, pool = init_like(2, 8, 16, 8, seed=5)
    queries = (queries * 1.0).to(torch.bfloat16).requires_grad_()
    pool = pool.clone().requires_grad_()
    rows = match_prompt_pool(queries, pool, method)
    assert not rows.requires_grad and rows.dtype == torch.int64 and rows.device == queries.device
    assert rows.shape == (2, 8)


def test_empty_replacement():
    queries, pool = init_like(2, 0, 5, 8, seed=6)
    for method in MATCHING_METHODS:
        assert match_prompt_pool(queries, pool, method).shape == (2, 0)


def test_missing_scipy_gives_clear_error(monkeypatch):
    monkeypatch.setattr(matching, "linear_sum_assignment", None)
    queries, pool = init_like(1, 4, 8, 8, seed=8)
    with pytest.raises(ImportError, match="scipy"):
        match_prompt_pool(queries, pool, "hungarian")
    assert match_prompt_pool(queries, pool, "nearest").shape == (1, 4)
