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
"""Prompt-pool matching for Croc's comprehension stage: nearest row, or exact one-to-one Hungarian."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

try:  # only torch/transformers are guaranteed where this file is used as remote code
    from scipy.optimize import linear_sum_assignment
except ImportError:  # pragma: no cover - exercised only without scipy
    linear_sum_assignment = None

MATCHING_METHODS = ("hungarian", "nearest")

# ---------------------------------------------------------------------------------------------
# How the exact Hungarian matching is made fast
#
# Problem, per image: costs c [n, m], n <= m. Pick a distinct column for every row, minimising
# the total cost. As a linear program (x_ij >= 0, sum_j x_ij = 1 per row, sum_i x_ij <= 1 per
# column) its dual is: maximise sum_i u_i + sum_j v_j subject to
#     u_i + v_j <= c_ij  for all i, j,      v_j <= 0  for all j.
# (Pad with m - n zero-cost dummy rows to get a square problem: the dummy rows' constraints
# u_d + v_j <= 0 become v_j <= 0 after shifting the duals so that u_d = 0.)
# An assignment sigma is optimal iff some dual satisfies, besides feasibility, complementary
# slackness: u_i + v_sigma(i) = c_i,sigma(i) on assigned pairs and v_j = 0 on unused columns.
#
# Certificate. Write w_j = -v_j >= 0. Unused columns have w_j = 0 and u_i = c_i,sigma(i) + w_sigma(i),
# so feasibility reads, for every row i with a = sigma(i) and every column j,
#     w_a <= w_j + c_ij - c_ia.
# Think of "row i leaves column a for column j" as an edge a -> j of weight c_ij - c_ia. The
# largest w satisfying all these upper bounds, with w = 0 on unused columns, is the shortest-path
# distance from a to the set of unused columns (a chain of moves that ends by taking a free
# column). Hence: sigma is optimal  <=>  no negative cycle and every such distance is >= 0, i.e.
# no chain of moves lowers the total. Every unused column sits at distance 0, so the unused
# columns of a row collapse to one "exit" edge of weight min_{j unused} c_ij - c_ia: the check
# costs O(n m) for the exits plus Bellman-Ford on the n x n graph between assigned columns.
#
# Candidates. Most columns are irrelevant: a row only ever wants its cheapest few columns, and at
# init-like pools (N(0, 1) rows, unit queries) every row wants the same smallest-norm columns. So
# we solve the problem restricted to a candidate set S (each row's k cheapest columns plus the
# columns of smallest mean cost), then run the certificate above on the FULL matrix. If it holds,
# the restricted optimum is the full optimum. If not, the violating chains end in some unused
# column outside S; we add those columns and repeat, and after a few rounds fall back to SciPy on
# the full matrix. The answer is therefore always an exact optimum.
#
# Warm start. SciPy's shortest-augmenting-path solver starts from zero duals; when every row wants
# the same columns (the init-like regime) each augmentation re-explores all earlier rows. Padding S
# to a square with zero-cost dummy rows gives the same problem (dummies take the unused columns),
# and in a square problem adding a constant p_j to a whole column changes every assignment's cost
# by the same sum_j p_j, so it changes no optimum. With p_j ~ the column's dual (its mean cost
# below a threshold) SciPy finds most rows' optimal columns at once: ~12 ms instead of ~400 ms.
#
# Dispatch. The estimate only helps when column means dominate the costs (init-like pools, where
# squared norms vary ~45x more than 2 v.p). Otherwise rows want different columns (trained-like
# pools), SciPy alone takes ~5-20 ms, and we call it directly on the full matrix.
#
# Rounding. The certificate runs in float64, where differences of fp32 costs are exact and chain
# sums of them are exact unless the costs span many orders of magnitude; a tolerance of a few
# hundred float64 ulps of the largest cost absorbs the rest (the optimum is exact to that level).
# ---------------------------------------------------------------------------------------------

_CANDIDATE_STRIDE = 8  # about this many cheapest columns of every row enter the candidates
_REACH = 2.0  # ... and columns whose mean cost is within this many residual stds of the n-th
_MAX_ROUNDS = 4  # candidate-set enlargements before falling back to the full SciPy solve
_DIRECT_BELOW = 64 * 256  # problems with fewer cost entries go straight to SciPy
_COLUMN_DOMINANCE = 10.0  # candidates + warm start only if column means vary this much more than the rest

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _thread_pool() -> ThreadPoolExecutor:
    """Module-level pool, created on first use, one worker per CPU."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="croc-match")
    return _executor


def _require_scipy():
    if linear_sum_assignment is None:
        raise ImportError(
            'matching method "hungarian" needs scipy (scipy.optimize.linear_sum_assignment); '
            'install it with `pip install scipy`, or use method "nearest"'
        )


# ---------------------------------------------------------------------------------------------
# distances


def pairwise_distances(queries: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Euclidean distances, fp32 and detached: queries [B, n, d], pool [m, d] -> [B, n, m]."""
    q = queries.detach().float()
    p = pool.detach().float().to(q.device)
    # one [B*n, d] x [m, d] product instead of B expanded copies of the pool: same values, fewer passes over it
    return torch.cdist(q.reshape(-1, q.shape[-1]), p).view(q.shape[0], q.shape[1], p.shape[0])


# ---------------------------------------------------------------------------------------------
# optimality certificate


def _exit_edges(costs: np.ndarray, cols: np.ndarray):
    """Cheapest unused column of every row: (its cost [n] float64, its index [n])."""
    penalty = np.zeros(costs.shape[1], dtype=costs.dtype)
    penalty[cols] = np.inf  # assigned columns are not exits
    masked = costs + penalty[None, :]  # [n, m]
    best = masked.argmin(axis=1)  # [n]
    return masked[np.arange(len(cols)), best].astype(np.float64), best


def _chain_distances(moves_t: np.ndarray, exit_gain: np.ndarray, track: bool):
    """Bellman-Ford towards the unused columns, relaxing only through nodes that just improved.

    moves_t [n, n]: moves_t[k, i] = cost change when row i takes row k's column.
    exit_gain [n]: cost change when row i takes its cheapest unused column.
    Returns (dist [n], via [n] or None), or None after n + 1 rounds (a negative cycle). `via[i]`
    names the row whose exit ends i's best chain (only if `track`).
    """
    n = len(exit_gain)
    rows = np.arange(n)
    dist = exit_gain.copy()
    via = rows.copy() if track else None
    changed = rows
    for _ in range(n + 1):
        through = moves_t[changed] + dist[changed][:, None]  # [len(changed), n]
        if track:
            best = through.argmin(axis=0)  # [n]
            candidate = through[best, rows]
        else:
            candidate = through.min(axis=0)
        better = candidate < dist
        if not better.any():
            return dist, via
        dist = np.where(better, candidate, dist)
        if track:
            via = np.where(better, via[changed[best]], via)
        changed = np.flatnonzero(better)
    return None


def _improving_exits(costs: np.ndarray, cols: np.ndarray, tol: float) -> np.ndarray | None:
    """Certify the assignment `cols` [n] on the full matrix costs [n, m].

    Returns an empty array if `cols` is optimal; otherwise the unused columns that end improving
    chains, or None if Bellman-Ford met a negative cycle (impossible for a restricted optimum,
    except through rounding). Needs m > n: every node then has an exit, so a negative cycle keeps
    Bellman-Ford from settling (for m == n the candidate set is all columns and needs no check).
    """
    n = len(cols)
    own = costs[np.arange(n), cols].astype(np.float64)  # [n]
    exit_cost, exit_col = _exit_edges(costs, cols)
    moves_t = np.ascontiguousarray((np.take(costs, cols, axis=1) - own[:, None]).T, dtype=np.float64)
    result = _chain_distances(moves_t, exit_cost - own, track=False)
    if result is None:
        return None
    if result[0].min() >= -tol:
        return exit_col[:0]  # every chain of moves ending in an unused column costs >= 0: optimal
    dist, via = _chain_distances(moves_t, exit_cost - own, track=True)
    return np.unique(exit_col[via[dist < -tol]])


# ---------------------------------------------------------------------------------------------
# restricted solve


def _column_effects(costs: np.ndarray):
    """Two-way split of costs [n, m]: column means [m], and the std of what row and column means
    leave unexplained (estimated on a subset of rows: it only steers speed, never the answer)."""
    col_mean = costs.mean(axis=0, dtype=np.float64)  # [m]
    sample = costs[:: max(1, costs.shape[0] // 48)]  # [~48, m]
    sample_col_mean = sample.mean(axis=0, dtype=np.float64)
    sample_row_mean = sample.mean(axis=1, dtype=np.float64)
    residual_var = sample.var(dtype=np.float64) - sample_col_mean.var() - sample_row_mean.var()
    return col_mean, float(np.sqrt(max(residual_var, 0.0)))


def _is_column_dominated(col_mean: np.ndarray, residual_std: float) -> bool:
    """True when columns differ far more than rows' preferences among them (init-like pools)."""
    return col_mean.var() >= _COLUMN_DOMINANCE * residual_std**2


def _candidate_columns(costs, col_mean, residual_std, stride: int, reach: float) -> np.ndarray:
    """Columns worth offering: about `stride` cheapest of every row, plus every column whose mean
    cost is within `reach` residual stds of the n-th cheapest mean (at least n + 16 of them)."""
    n, m = costs.shape
    if m <= n + 16:
        return np.arange(m)
    # a row's cheapest entry among every stride-th column is about its stride-th cheapest overall
    row_threshold = costs[:, ::stride].min(axis=1)  # [n]
    cheapest = np.flatnonzero((costs <= row_threshold[:, None]).any(axis=0))
    mean_threshold = max(np.partition(col_mean, n)[n] + reach * residual_std, np.partition(col_mean, n + 16)[n + 16])
    by_mean = np.flatnonzero(col_mean <= mean_threshold)
    return np.union1d(cheapest, by_mean)


def _column_prices(sub: np.ndarray) -> np.ndarray:
    """Estimated column duals -v_j >= 0 of sub [n, s]: a column's mean cost below the (n+16)-th."""
    n, s = sub.shape
    col_mean = sub.mean(axis=0)  # [s]
    threshold = np.partition(col_mean, min(n + 16, s - 1))[min(n + 16, s - 1)]
    return np.maximum(threshold - col_mean, 0.0)


def _solve_warm(sub: np.ndarray) -> np.ndarray:
    """Exact assignment on sub [n, s] (n <= s) -> column per row [n], via a price-shifted square."""
    n, s = sub.shape
    if s == n:
        return linear_sum_assignment(sub)[1]
    prices = _column_prices(sub)  # [s]
    square = np.empty((s, s))  # rows >= n: dummy rows, zero cost before the price shift
    np.add(sub, prices[None, :], out=square[:n])
    square[n:] = prices[None, :]
    return linear_sum_assignment(square)[1][:n]


def _solve_with_candidates(
    costs: np.ndarray, stride: int = _CANDIDATE_STRIDE, reach: float = _REACH, effects=None
) -> np.ndarray:
    """Restricted solve + full-matrix certificate, enlarging the candidates until it holds."""
    n, m = costs.shape
    tol = 64 * np.finfo(np.float64).eps * max(1.0, float(costs.max()), -float(costs.min())) * n
    col_mean, residual_std = _column_effects(costs) if effects is None else effects
    columns = _candidate_columns(costs, col_mean, residual_std, stride, reach)
    for _ in range(_MAX_ROUNDS):
        sub = np.take(costs, columns, axis=1).astype(np.float64)  # [n, s]
        cols = columns[_solve_warm(sub)]
        missing = _improving_exits(costs, cols, tol)
        if missing is not None and missing.size == 0:
            return cols.astype(np.int64)
        if missing is None or len(columns) + len(missing) >= m:
            break
        stride, reach = 2 * stride, 2 * reach  # offer more columns next round
        more = _candidate_columns(costs, col_mean, residual_std, stride, reach)
        columns = np.union1d(np.union1d(columns, missing), more)
    return linear_sum_assignment(costs)[1].astype(np.int64)


def _solve_image(costs: np.ndarray) -> np.ndarray:
    """Exact minimum-cost assignment of one image: costs [n, m] -> column per row [n]."""
    n, m = costs.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n * m < _DIRECT_BELOW or m <= n + 16:
        return linear_sum_assignment(costs)[1].astype(np.int64)
    effects = _column_effects(costs)
    if not _is_column_dominated(*effects):
        return linear_sum_assignment(costs)[1].astype(np.int64)  # SciPy is already fast here
    return _solve_with_candidates(costs, effects=effects)


# ---------------------------------------------------------------------------------------------
# public API


def hungarian_assignment(costs) -> np.ndarray:
    """Exact min-cost one-to-one assignment per image, images solved in parallel threads.

    costs: [num_images, rows, cols] (numpy or torch), rows <= cols, finite.
    Returns the column index of every row, int64 [num_images, rows].
    """
    _require_scipy()
    if isinstance(costs, torch.Tensor):
        costs = costs.detach().cpu().numpy()
    costs = np.asarray(costs)
    if costs.ndim != 3:
        raise ValueError(f"costs must be [num_images, rows, cols], got shape {costs.shape}")
    num_images, rows, cols = costs.shape
    if rows > cols:
        raise ValueError(f"need rows <= cols for a one-to-one assignment, got {rows} rows and {cols} cols")
    if not np.issubdtype(costs.dtype, np.floating):
        costs = costs.astype(np.float64)
    if not np.isfinite(costs).all():
        raise ValueError("costs must be finite")
    if num_images <= 1:
        solved = [_solve_image(c) for c in costs]
    else:
        solved = list(_thread_pool().map(_solve_image, costs))
    return np.stack(solved).astype(np.int64) if solved else np.zeros((0, rows), dtype=np.int64)


def _nearest_rows(queries: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Official matcher: argmin of torch.cdist in the queries' dtype, many-to-one. [B, n]"""
    q = queries.detach()
    flat = q.reshape(-1, q.shape[-1])  # [B*n, d]: the pool is read once for all images
    p = pool.detach().to(device=q.device, dtype=q.dtype)
    try:
        distances = torch.cdist(flat, p)  # [B*n, m]
    except (NotImplementedError, RuntimeError):
        # CPU half/bfloat16 only has the matmul formulation, which cdist itself picks for > 25 rows
        distances = torch.cdist(flat, p, compute_mode="use_mm_for_euclid_dist")
    return distances.argmin(dim=-1).view(q.shape[0], q.shape[1])


def match_prompt_pool(queries: torch.Tensor, pool: torch.Tensor, method: str) -> torch.Tensor:
    """Pool row index for every replaced token.

    queries: [num_images, num_replaced, hidden], any float dtype/device; pool: [pool_size, hidden].
    method "nearest": nearest row per query (official code), in the queries' dtype.
    method "hungarian": one-to-one rows of minimum total Euclidean distance (paper), fp32 distances.
    Returns int64 [num_images, num_replaced] on queries.device; never carries gradient.
    """
    if method not in MATCHING_METHODS:
        raise ValueError(f"unknown matching method {method!r}; allowed: {', '.join(MATCHING_METHODS)}")
    if queries.ndim != 3 or pool.ndim != 2 or queries.shape[-1] != pool.shape[-1]:
        raise ValueError(
            f"expected queries [num_images, num_replaced, hidden] and pool [pool_size, hidden], "
            f"got {tuple(queries.shape)} and {tuple(pool.shape)}"
        )
    num_images, num_replaced, _ = queries.shape
    pool_size = pool.shape[0]
    if method == "nearest":
        if pool_size == 0 and num_replaced > 0:
            raise ValueError("the prompt pool is empty")
        return _nearest_rows(queries, pool).to(torch.int64)
    if pool_size < num_replaced:
        raise ValueError(
            f"hungarian matching is one-to-one: the pool has {pool_size} rows but {num_replaced} "
            f"tokens are replaced per image; use a pool of at least {num_replaced} rows"
        )
    _require_scipy()
    distances = pairwise_distances(queries, pool)  # [B, n, m] fp32
    assignment = hungarian_assignment(distances.cpu().numpy())
    return torch.from_numpy(assignment).to(device=queries.device, dtype=torch.int64)


__all__ = ["MATCHING_METHODS", "hungarian_assignment", "match_prompt_pool", "pairwise_distances"]
