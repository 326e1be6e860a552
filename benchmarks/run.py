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
"""Run every benchmark, print a markdown table, write `results/latest.json` and draw `results/ratios.png`."""

import argparse
import importlib
import json
import math
import os
import sys
import time
import traceback

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
for _path in (REPO_ROOT, BENCH_DIR):  # `import common`, `import modeling_croc` without installing anything
    if _path not in sys.path:
        sys.path.insert(0, _path)

# (group, module) in the order they run and appear in the table.
BENCHMARKS = [
    ("inference", "bench_inference"),
    ("loading", "bench_loading"),
    ("comprehension", "bench_comprehension"),
    ("matching", "bench_matching"),
    ("conversion", "bench_conversion"),
    ("xformer", "bench_xformer"),
    ("lora", "bench_lora"),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny models and 1-2 repeats: a smoke run, not figures")
    parser.add_argument(
        "--output", default=os.path.join(BENCH_DIR, "results"), help="folder for latest.json and ratios.png"
    )
    parser.add_argument("--only", default="", help="comma-separated groups to run (default: all), e.g. inference,lora")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: steadiest ratios on shared machines; 0 = torch's default)"
    )
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu",
        help="time CPU runs by process CPU time (default: robust to other load on the machine) or wall clock",
    )
    return parser.parse_args(argv)


def import_benchmark(module_name: str):
    """(module, None) or (None, why it is skipped) for a benchmark module that is absent or does not import."""
    try:
        return importlib.import_module(module_name), None
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None, f"{module_name}.py does not exist yet"
        return None, f"{module_name}.py failed to import: {exc!r}"
    except Exception as exc:  # noqa: BLE001 - an unfinished module must not stop the others
        return None, f"{module_name}.py failed to import: {exc!r}"


def checked_rows(group: str, module_name: str, rows) -> list[dict]:
    """Tag rows with their group; malformed output becomes an error row rather than vanishing."""
    import common

    if not isinstance(rows, list):
        return [common.error_row(f"{group}/run", f"{module_name}.run returned {type(rows).__name__}, not a list")]
    checked = []
    for row in rows:
        if isinstance(row, dict):
            row = common.normalise_row(row)
        problem = common.row_problem(row)
        if problem:
            checked.append(common.error_row(f"{group}/malformed row", f"{module_name}: {problem}: {row!r}"))
        else:
            checked.append({"group": group, **row})
    if not checked:
        checked.append(common.error_row(f"{group}/run", f"{module_name}.run returned no rows"))
    return checked


def run_benchmark(group: str, module_name: str, quick: bool) -> tuple[list[dict], str | None, float]:
    """(rows, skip note, seconds) for one benchmark module; a failing `run` gives an error row."""
    import common

    start = time.perf_counter()
    module, skipped = import_benchmark(module_name)
    if module is None:
        return [], skipped, time.perf_counter() - start
    try:
        rows = checked_rows(group, module_name, module.run(quick=quick))
    except Exception as exc:  # noqa: BLE001 - reported in the table, and in the exit status
        traceback.print_exc()
        rows = [common.error_row(f"{group}/run", exc, group=group)]
    return rows, None, time.perf_counter() - start


def json_safe(value):
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def selected(only: str) -> list[tuple[str, str]]:
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    unknown = wanted - {group for group, _ in BENCHMARKS}
    if unknown:
        raise SystemExit(f"unknown benchmark group(s) {sorted(unknown)}; known: {[g for g, _ in BENCHMARKS]}")
    return [(group, module) for group, module in BENCHMARKS if not wanted or group in wanted]


def report(results: dict, output: str) -> None:
    """Print the machine line, the table and the notes; write the JSON and the chart."""
    import common

    print()
    print(common.describe_machine(results["machine"]))
    print()
    print(common.markdown_table(results["rows"]))
    print()
    for note in results["notes"]:
        print(f"- {note}")
    os.makedirs(output, exist_ok=True)
    json_path = os.path.join(output, "latest.json")
    with open(json_path, "w") as handle:
        json.dump(json_safe(results), handle, indent=2, allow_nan=False)
    print(f"Results written to {json_path}")
    chart_path = os.path.join(output, "ratios.png")
    mode = "quick smoke run, not figures" if results["quick"] else "full run"
    why_not = common.draw_ratio_chart(results["rows"], chart_path, f"modeling_croc benchmarks ({mode})")
    print(f"Chart skipped: {why_not}" if why_not else f"Chart written to {chart_path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import common

    threads = common.set_threads(args.threads)
    common.set_clock(args.clock)
    common.start_memory_probe_server()
    started = time.perf_counter()
    rows, notes = [], []
    for group, module_name in selected(args.only):
        print(f"[{group}] running {module_name} ...", flush=True)
        group_rows, skipped, seconds = run_benchmark(group, module_name, args.quick)
        if skipped:
            notes.append(f"{group}: skipped, {skipped}")
            print(f"[{group}] SKIPPED: {skipped}", flush=True)
        else:
            print(f"[{group}] {len(group_rows)} rows in {seconds:.1f} s", flush=True)
        rows += group_rows
    total = time.perf_counter() - started
    notes.append(
        f"total {total:.0f} s wall, {threads} torch thread(s), CPU timings by {args.clock} clock, "
        f"{'--quick' if args.quick else 'full'} run"
    )
    notes.append("ratio = ours / baseline, median of per-pair ratios over interleaved repeats; lower is better")
    results = {
        "machine": common.machine_description(),
        "quick": args.quick,
        "threads": threads,
        "clock": args.clock,
        "seconds": total,
        "rows": rows,
        "notes": notes,
    }
    report(results, args.output)
    errors = [row["name"] for row in rows if "error" in row]
    if errors:
        print(f"{len(errors)} benchmark(s) failed: {', '.join(errors)}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
