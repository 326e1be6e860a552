# Copyright 2026 The modeling_croc authors. All rights reserved.
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
"""Smoke test of `benchmarks/run.py --quick` and unit tests of the shared benchmark helpers."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

BENCH_DIR = REPO_ROOT / "benchmarks"
OUR_GROUPS = {"inference", "loading", "comprehension", "lora"}


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("bench_common_under_test", BENCH_DIR / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `--quick` run: (completed process, parsed latest.json, output folder)."""
    output = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.run(
        [sys.executable, str(BENCH_DIR / "run.py"), "--quick", "--output", str(output)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    results_path = output / "latest.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else None
    return process, results, output


def test_quick_run_exits_cleanly_and_writes_json(quick_run):
    process, results, _ = quick_run
    assert process.returncode == 0, f"stdout:\n{process.stdout[-4000:]}\nstderr:\n{process.stderr[-4000:]}"
    assert results is not None, "latest.json was not written"
    assert results["quick"] is True and results["rows"]
    for key in ("cpu", "logical_cores", "ram_gib", "torch", "transformers"):
        assert results["machine"].get(key) not in (None, ""), key


def test_every_row_has_a_name_and_a_figure(quick_run):
    _, results, _ = quick_run
    for row in results["rows"]:
        assert isinstance(row.get("name"), str) and row["name"], row
        assert "error" not in row, f"{row['name']} failed: {row['error']}"
        figure = row.get("ratio", row.get("value"))
        assert isinstance(figure, (int, float)) and math.isfinite(figure) and figure >= 0, row


def test_our_benchmarks_all_report(quick_run):
    _, results, _ = quick_run
    groups = {row["group"] for row in results["rows"]}
    assert OUR_GROUPS <= groups
    names = {row["name"] for row in results["rows"]}
    for expected in ("inference/forward time", "inference/generate peak memory", "loading/from_pretrained time",
                     "comprehension/train step (hungarian)", "lora/train step time", "lora/trainable parameters (LoRA)"):
        assert expected in names
    lora = {row["name"]: row["value"] for row in results["rows"] if "value" in row}
    assert 0 < lora["lora/trainable parameters (LoRA)"] < lora["lora/trainable parameters (full)"]


def test_table_and_chart_are_reported(quick_run):
    process, results, output = quick_run
    assert "| Benchmark | Device | Ours | Baseline | Ratio | Target | Status |" in process.stdout
    assert "**Machine:**" in process.stdout
    for row in results["rows"]:
        assert f"| {row['name']} |" in process.stdout
    if importlib.util.find_spec("matplotlib") is None:
        assert "Chart skipped: matplotlib is not installed" in process.stdout
    else:
        assert (output / "ratios.png").stat().st_size > 0
    # benchmarks that do not exist yet are named, not silently dropped
    present = {row["group"] for row in results["rows"]}
    for group in ("matching", "conversion", "xformer"):
        assert group in present or any(note.startswith(f"{group}: skipped") for note in results["notes"])


# ------------------------------------------------------------------ helpers


def test_interleaved_alternates_and_takes_median_of_pair_ratios(common):
    calls = []
    a_times = iter([1.0, 2.0, 3.0])
    b_times = iter([1.0, 1.0, 1.0])

    def measure_a():
        calls.append("a")
        return next(a_times)

    def measure_b():
        calls.append("b")
        return next(b_times)

    result = common.interleaved(measure_a, measure_b, repeats=3, warmup=0)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert result["ours"] == 2.0 and result["baseline"] == 1.0 and result["ratio"] == 2.0


def test_ratio_row_and_table(common):
    row = common.ratio_row("x/time", {"ours": 0.2, "baseline": 0.1, "ratio": 2.0, "ours_all": [0.2]}, 1.05, "s")
    assert row["met"] is False and row["repeats"] == 1
    rows = [row, common.value_row("x/params", 1234, "params"), common.error_row("x/run", "Traceback\nValueError: bad")]
    assert all(common.row_problem(r) is None for r in rows)
    assert common.row_problem({"name": "x"}) is not None
    table = common.markdown_table(rows)
    assert "| x/time | - | 200.0 ms | 100.0 ms | 2.000x | <= 1.05x | **missed** |" in table
    assert "1,234" in table and "ERROR: ValueError: bad" in table


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak-RSS reset needs Linux /proc")
def test_peak_rss_measurement_sees_a_transient_allocation(common):
    measured = common._measure_workload_rss(_allocate_64_mib, {}) / common.MIB
    assert 48 < measured < 200


def _allocate_64_mib():
    def workload():
        block = bytearray(64 * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
        return len(block)

    return workload


def test_foreign_rows_are_brought_to_one_convention(common):
    speed_up = common.normalise_row({"name": "m", "ours_s": 0.5, "baseline_s": 2.0, "ratio": 4.0, "target_s": 1.0})
    assert speed_up["ratio"] == 0.25 and speed_up["ratio_as_reported"] == 4.0 and speed_up["unit"] == "s"
    assert common.row_met(speed_up) is True  # 0.5 s <= the 1 s absolute target
    only_time = common.normalise_row({"name": "t", "ours_s": 0.5, "baseline_s": None, "ratio": None})
    assert only_time["value"] == 0.5 and "ratio" not in only_time and common.row_problem(only_time) is None
    value_with_target = {"name": "v", "value": 4.0, "target": 1.5}
    assert common.row_met(value_with_target) is False
    assert common.row_met({"name": "i", "value": 3}) is None
