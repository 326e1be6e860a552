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
"""Shared benchmark helpers: interleaved timing, peak-memory probes, machine description, rows, table and chart.

Row format (what every `bench_*.run(quick)` returns, a list of dicts):

- `name` (str, required): e.g. "inference/forward time".
- `ratio` (float) for a side-by-side comparison, `ours / baseline` (lower is better), or `value` (float) for a single
  figure such as a parameter count. One of the two is required.
- optional: `ours`, `baseline` (absolute medians), `unit` ("s", "MiB", "params", ...), `ours_label`,
  `baseline_label`, `target` (max acceptable ratio), `met` (bool), `repeats`, `device`, `dtype`, `note`.
- `error` (str): set by `run.py` when a benchmark raised; such a row has neither ratio nor value.

Use `ratio_row` / `value_row` to build rows, `compare_times` / `compare_peak_memory` to measure them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable

MIB = 2**20

# Modules the memory-probe server imports once, so each probe child starts with them loaded (fork, not re-import).
_PRELOAD = [
    "torch",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "transformers.models.clip.modeling_clip",
    "transformers.models.llava.modeling_llava",
    "modeling_croc",
    "peft",
]
_context = None
_clock = "cpu"  # see set_clock
_threads: int | None = None  # torch intra-op threads for this process and every probe child (None = torch default)


# ------------------------------------------------------------------ devices


def set_threads(threads: int | None) -> int:
    """Use `threads` torch threads here and in memory-probe children (None or 0 = torch's default); returns it."""
    import torch

    global _threads
    _threads = threads or None
    if _threads:
        torch.set_num_threads(_threads)
    return torch.get_num_threads()


def devices() -> list[tuple[str, object]]:
    """(device, dtype) pairs to benchmark: CPU in float32, plus CUDA in bfloat16 when present."""
    import torch

    pairs = [("cpu", torch.float32)]
    if torch.cuda.is_available():
        pairs.append(("cuda", torch.bfloat16))
    return pairs


def synchronize(device: str) -> None:
    """Wait for queued GPU work so wall-clock timings cover it (no-op on CPU)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------ timing


def set_clock(clock: str) -> None:
    """"cpu": time CPU work with the process's CPU clock (user + system seconds of all its threads), which other
    processes on a shared machine barely disturb; "wall": wall-clock time. CUDA work is always timed by wall clock."""
    global _clock
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'cpu' or 'wall', got {clock!r}")
    _clock = clock


def clock_name(device: str = "cpu") -> str:
    return "wall" if str(device).startswith("cuda") else _clock


def time_call(fn: Callable[[], object], device: str = "cpu") -> float:
    """Seconds of one call of `fn` on the clock chosen by `set_clock`, synchronising the device before and after."""
    now = time.perf_counter if clock_name(device) == "wall" else time.process_time
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return now() - start


def interleaved(
    measure_a: Callable[[], float], measure_b: Callable[[], float], repeats: int, warmup: int = 1
) -> dict:
    """Alternate two measurements (A B, B A, A B, ...) and summarise them.

    Returns `{"ours": median A, "baseline": median B, "ratio": median of the per-pair ratios A/B, "ours_all": [...],
    "baseline_all": [...]}`. Pairing neighbours cancels slow drifts in machine load; alternating the order within a
    pair cancels any bias of running first or second.
    """
    for _ in range(warmup):
        measure_a()
        measure_b()
    a_values, b_values = [], []
    for i in range(repeats):
        if i % 2 == 0:
            a_values.append(measure_a())
            b_values.append(measure_b())
        else:
            b_values.append(measure_b())
            a_values.append(measure_a())
    ratios = [a / b for a, b in zip(a_values, b_values) if b > 0]
    return {
        "ours": statistics.median(a_values),
        "baseline": statistics.median(b_values),
        "ratio": statistics.median(ratios) if ratios else math.nan,
        "ours_all": a_values,
        "baseline_all": b_values,
    }


def compare_times(
    fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu"
) -> dict:
    """Interleaved wall-clock comparison of two zero-argument callables (see `interleaved`), in seconds."""
    return interleaved(lambda: time_call(fn_a, device), lambda: time_call(fn_b, device), repeats, warmup)


# ------------------------------------------------------------------ memory


def configure_memory_probes(extra_preload: list[str] | None = None) -> None:
    """Choose the modules every memory-probe child has pre-imported (call before the first probe)."""
    global _context
    for name in extra_preload or []:
        if name not in _PRELOAD:
            _PRELOAD.append(name)
    _context = None


def _probe_context():
    """A forkserver context whose server pre-imports torch and transformers once: probes fork from a process that
    never ran a torch kernel (no OpenMP state to break), yet do not pay the ~10 s import each."""
    global _context
    if _context is None:
        methods = multiprocessing.get_all_start_methods()
        _context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            _context.set_forkserver_preload(list(_PRELOAD))
    return _context


def _start_child(process) -> None:
    with _fixed_mmap_threshold():  # the forkserver (or spawned child) starts here and keeps the setting
        process.start()


def start_memory_probe_server() -> None:
    """Start the probe server now, so its imports overlap with other work (optional)."""
    context = _probe_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        with _fixed_mmap_threshold():
            forkserver.ensure_running()


@contextlib.contextmanager
def _fixed_mmap_threshold():
    """Start processes with glibc's mmap threshold pinned at 128 KiB: every large tensor then lives in its own
    mapping that is returned on free, so RSS follows live memory. (glibc otherwise raises the threshold after the
    first big free, and heap fragmentation makes peak RSS differ by up to 15% between equivalent workloads.)"""
    previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = previous


def _status_kib(field: str) -> int | None:
    """A `VmRSS`/`VmHWM`-style field of /proc/self/status in KiB, or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so current RSS is the live memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _measure_workload_rss(setup: Callable, kwargs: dict) -> float:
    """Peak RSS growth (bytes) of running `setup(**kwargs)()` once, above the RSS right after the setup."""
    workload = setup(**kwargs)
    _release_free_memory()
    if _reset_peak_rss():
        baseline = _status_kib("VmRSS") * 1024
        workload()
        return _status_kib("VmHWM") * 1024 - baseline
    # Fallback: the high-water mark cannot be reset, so measure growth of ru_maxrss (misses peaks below it).
    baseline = _maxrss_bytes()
    workload()
    return _maxrss_bytes() - baseline


def _probe_child(setup: Callable, kwargs: dict, threads: int | None, connection) -> None:
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        connection.send(("ok", _measure_workload_rss(setup, kwargs)))
    except BaseException:  # noqa: BLE001 - report anything to the parent
        connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


def peak_rss_delta(setup: Callable, kwargs: dict | None = None, timeout: float = 600.0) -> float:
    """Peak resident memory (MiB) a workload adds, measured in a fresh child process.

    `setup` is a module-level function (picklable by name) that builds everything (models, inputs) and returns a
    zero-argument workload; the child measures RSS after setup, resets the peak, runs the workload once, and
    returns the peak minus that baseline.
    """
    context = _probe_context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_probe_child, args=(setup, kwargs or {}, _threads, sender))
    _start_child(child)
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise TimeoutError(f"memory probe {setup.__name__} took longer than {timeout} s")
        status, payload = receiver.recv()
    except EOFError as exc:
        raise RuntimeError(f"memory probe {setup.__name__} died (exit code {child.exitcode})") from exc
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    if status != "ok":
        raise RuntimeError(f"memory probe {setup.__name__} failed:\n{payload}")
    return payload / MIB


def peak_cuda_delta(setup: Callable, kwargs: dict | None = None) -> float:
    """Peak allocated CUDA memory (MiB) a workload adds above what its setup left allocated (in-process)."""
    import torch

    workload = setup(**(kwargs or {}))
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    workload()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    del workload
    gc.collect()
    torch.cuda.empty_cache()
    return peak / MIB


def compare_peak_memory(
    setup: Callable, kwargs_a: dict, kwargs_b: dict, repeats: int, device: str = "cpu"
) -> dict:
    """Interleaved peak-memory comparison of `setup(**kwargs_a)` vs `setup(**kwargs_b)` workloads, in MiB.

    On CPU each measurement is a fresh child process (peak RSS growth); on CUDA, `torch.cuda.max_memory_allocated`.
    """
    probe = peak_cuda_delta if str(device).startswith("cuda") else peak_rss_delta
    return interleaved(lambda: probe(setup, kwargs_a), lambda: probe(setup, kwargs_b), repeats, warmup=0)


# ------------------------------------------------------------------ models


def model_sizes(quick: bool) -> dict:
    """Vision and text sub-configs: the issue's sizes (576 image tokens, text 256 x 4 layers, 32k vocabulary), or
    a tiny model for `--quick` (16 image tokens, text 64 x 2 layers, 1k vocabulary)."""
    layers = {"num_hidden_layers": 2, "num_attention_heads": 2}
    if quick:
        vision = {"hidden_size": 32, "intermediate_size": 64, "image_size": 56, **layers}
        text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
        return {"vision": vision, "text": {**text, "vocab_size": 1000}, "prompt_pool_size": 16, "text_before": 4,
                "text_after": 6}
    vision = {"hidden_size": 64, "intermediate_size": 128, "image_size": 336, **layers}
    text = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4}
    return {"vision": vision, "text": {**text, "vocab_size": 32000}, "prompt_pool_size": 2048, "text_before": 8,
            "text_after": 24}


def croc_config(quick: bool, **overrides):
    """A `CrocConfig` of the benchmark sizes (CLIP tower with 14 px patches, Llama text model)."""
    from modeling_croc import CrocConfig

    sizes = model_sizes(quick)
    vision = {"model_type": "clip_vision_model", "patch_size": 14, **sizes["vision"]}
    text = {"model_type": "llama", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **sizes["text"]}
    settings = {"prompt_pool_size": sizes["prompt_pool_size"], **overrides}
    return CrocConfig(vision_config=vision, text_config=text, **settings)


def build_croc(quick: bool, device: str = "cpu", dtype=None, seed: int = 0, **overrides):
    """A randomly initialised `CrocForConditionalGeneration` (eval mode) of the benchmark sizes."""
    import torch

    from modeling_croc import CrocForConditionalGeneration

    torch.manual_seed(seed)
    model = CrocForConditionalGeneration(croc_config(quick, **overrides)).eval()
    model.generation_config.pad_token_id = 0
    return model.to(device=device, dtype=dtype or torch.float32)


def llava_vocab_size(text_vocab: int) -> int:
    """LLaVA's vocabulary: the text one plus the image token, padded to a multiple of 64 as the llava-hf
    checkpoints are (32000 -> 32064). An unpadded 32001-row LM head runs a misaligned GEMM that is 30-80% slower
    on CPU, which would flatter Croc for a reason unrelated to its implementation."""
    return -(-(text_vocab + 1) // 64) * 64


def llava_twin(croc):
    """transformers' `LlavaForConditionalGeneration` holding Croc's weights (minus the prompt pool and the
    reconstruction head), its vocabulary grown by zero rows for the image token (see `llava_vocab_size`), on
    Croc's device and dtype."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = croc.config
    llava_config = LlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config={**config.text_config.to_dict(), "vocab_size": llava_vocab_size(config.text_config.vocab_size)},
        image_token_index=config.image_token_id,
        vision_feature_layer=config.vision_feature_layer,
    )
    llava = LlavaForConditionalGeneration(llava_config).eval()
    state = {k: v for k, v in croc.state_dict().items() if "prompt_pool" not in k and "reconstruction_head" not in k}
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        padding = llava_config.text_config.vocab_size - state[key].shape[0]
        state[key] = torch.cat([state[key], state[key].new_zeros(padding, state[key].shape[1])])
    missing, unexpected = llava.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"LLaVA twin does not match Croc: missing {missing}, unexpected {unexpected}")
    llava.generation_config.pad_token_id = 0
    return llava.to(device=croc.device, dtype=croc.dtype)


def make_batch(config, quick: bool, batch: int = 2, device: str = "cpu", dtype=None, seed: int = 0) -> dict:
    """`input_ids` [bos, text, 576 image tokens, text] x batch, `attention_mask`, `pixel_values` and `labels`
    (only the text after the image is supervised)."""
    import torch

    sizes = model_sizes(quick)
    generator = torch.Generator().manual_seed(seed)
    vocab = config.text_config.vocab_size
    before = torch.randint(3, vocab, (batch, sizes["text_before"]), generator=generator)
    after = torch.randint(3, vocab, (batch, sizes["text_after"]), generator=generator)
    image = torch.full((batch, config.num_image_tokens), config.image_token_id)
    input_ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), before, image, after], dim=1)
    labels = torch.full_like(input_ids, -100)
    labels[:, -sizes["text_after"] :] = after
    size = config.vision_config.image_size
    pixel_values = torch.randn(batch, 3, size, size, generator=generator)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values": pixel_values.to(device=device, dtype=dtype or torch.float32),
        "labels": labels.to(device),
    }


def without(mapping: dict, *keys: str) -> dict:
    """A copy of `mapping` without `keys`."""
    return {k: v for k, v in mapping.items() if k not in keys}


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


# ------------------------------------------------------------------ rows


def ratio_row(name: str, measured: dict, target: float | None, unit: str, **extra) -> dict:
    """A comparison row from an `interleaved`-style result; `met` says whether ratio <= target."""
    ratio = measured["ratio"]
    row = {
        "name": name,
        "ratio": ratio,
        "ours": measured["ours"],
        "baseline": measured["baseline"],
        "unit": unit,
        "target": target,
        "met": None if target is None or not math.isfinite(ratio) else bool(ratio <= target),
        "repeats": len(measured.get("ours_all", [])),
        "clock": clock_name(extra.get("device", "cpu")) if unit == "s" else None,
        "ours_samples": list(measured.get("ours_all", [])),
        "baseline_samples": list(measured.get("baseline_all", [])),
    }
    row.update(extra)
    return row


def value_row(name: str, value: float, unit: str, **extra) -> dict:
    """A single-figure row (no comparison), e.g. a parameter count."""
    return {"name": name, "value": value, "unit": unit, **extra}


def error_row(name: str, error: BaseException | str, **extra) -> dict:
    """A row recording that a benchmark failed; shown as ERROR in the table."""
    text = error if isinstance(error, str) else "".join(traceback.format_exception(error)).strip()
    return {"name": name, "error": text, **extra}


def row_problem(row) -> str | None:
    """Why `row` is not a valid result row, or None when it is."""
    if not isinstance(row, dict):
        return f"row is a {type(row).__name__}, not a dict"
    if not isinstance(row.get("name"), str) or not row["name"]:
        return "row has no name"
    if "error" in row:
        return None
    for key in ("ratio", "value"):
        if key in row and isinstance(row[key], (int, float)) and not isinstance(row[key], bool):
            return None
    return f"row {row['name']!r} has neither a numeric ratio nor a numeric value"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_speed_up(ratio: float, ours: float, baseline: float) -> bool:
    """True when `ratio` is baseline / ours (and not ours / baseline)."""
    return math.isclose(ratio, baseline / ours, rel_tol=1e-6) and not math.isclose(ratio, ours / baseline, rel_tol=1e-6)


def normalise_row(row: dict) -> dict:
    """Bring a row from any benchmark to this module's conventions (a copy; the original figures are kept):

    - `ours_s` / `baseline_s` become `ours` / `baseline` in seconds;
    - a ratio reported as a speed-up (`baseline / ours`) becomes `ours / baseline`, so every ratio in the table and
      chart reads the same way (lower is better); the reported figure stays in `ratio_as_reported`;
    - a row with only an absolute time (no ratio) shows it as its `value`.
    """
    row = dict(row)
    for key in ("ours", "baseline"):
        if key not in row and _number(row.get(f"{key}_s")):
            row[key] = row[f"{key}_s"]
            row.setdefault("unit", "s")
    ours, baseline, ratio = row.get("ours"), row.get("baseline"), row.get("ratio")
    comparable = _number(ours) and _number(baseline) and _number(ratio) and ours > 0 and baseline > 0
    if comparable and _is_speed_up(ratio, ours, baseline):
        row["ratio_as_reported"] = ratio
        row["ratio"] = ours / baseline
        flipped = f"reported as speed-up {ratio:.2f}x; shown as ours/baseline"
        row["note"] = f"{row['note']}; {flipped}" if row.get("note") else flipped
    if not _number(row.get("ratio")) and not _number(row.get("value")) and _number(ours):
        row.pop("ratio", None)
        row["value"] = ours
    return row


def row_met(row: dict) -> bool | None:
    """Whether the row meets its target: ratio <= target, or the absolute time <= `target_s`, or value <= target;
    None when the row has no target."""
    if _number(row.get("target")):
        figure = row.get("ratio") if _number(row.get("ratio")) else row.get("value")
        if _number(figure):
            return bool(figure <= row["target"])
    if _number(row.get("target_s")) and _number(row.get("ours")):
        return bool(row["ours"] <= row["target_s"])
    met = row.get("met")
    return met if isinstance(met, bool) else None


# ------------------------------------------------------------------ machine


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - any failure just means "not available"
        return "not installed"


def machine_description() -> dict:
    """CPU model, cores, RAM, GPU and library versions, as a flat dict."""
    import torch

    info = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    with contextlib.suppress(ImportError):
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    if info["ram_gib"] is None and hasattr(os, "sysconf"):
        with contextlib.suppress(ValueError, OSError):
            info["ram_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


def describe_machine(info: dict) -> str:
    """One markdown line describing the machine."""
    cores = f"{info['usable_cores']} usable cores ({info['logical_cores']} logical"
    cores += f", {info['physical_cores']} physical)" if info.get("physical_cores") else ")"
    return (
        f"**Machine:** {info['cpu']}, {cores}, {info['ram_gib']} GiB RAM, GPU: {info['gpu']}; "
        f"Python {info['python']}, torch {info['torch']} ({info['torch_threads']} threads), "
        f"transformers {info['transformers']}, peft {info['peft']}"
    )


# ------------------------------------------------------------------ table


def format_quantity(value, unit: str | None) -> str:
    """Human-readable absolute figure: seconds as ms/s, MiB, counts with separators."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit in ("params", "count") or (isinstance(value, int) and not unit):
        return f"{int(value):,}"
    if isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return f"{text} {unit}" if unit else text


def _status(row: dict) -> str:
    if "error" in row:
        lines = [line for line in str(row["error"]).strip().splitlines() if line.strip()]
        return "ERROR: " + (lines[-1] if lines else "failed")
    met = row_met(row)
    return "info" if met is None else "met" if met else "**missed**"


def _target_cell(row: dict) -> str:
    if _number(row.get("target")):
        return f"<= {row['target']:g}x" if _number(row.get("ratio")) else f"<= {row['target']:g}"
    if _number(row.get("target_s")):
        return f"<= {format_quantity(row['target_s'], 's')}"
    return "-"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict]) -> str:
    """The results as a markdown table (one line per row, errors included)."""
    header = "| Benchmark | Device | Ours | Baseline | Ratio | Target | Status | Notes |"
    lines = [header, "|---|---|---:|---:|---:|---:|---|---|"]
    for row in rows:
        unit = row.get("unit")
        ours = row.get("ours", row.get("value"))
        ratio = row.get("ratio")
        device = row.get("device", "") + (f" {row['dtype']}" if row.get("dtype") else "")
        cells = [
            row.get("name", "?"),
            device.strip() or "-",
            format_quantity(ours, unit),
            format_quantity(row.get("baseline"), unit),
            f"{ratio:.3f}x" if _number(ratio) else "-",
            _target_cell(row),
            _status(row),
            row.get("note", ""),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ chart


def draw_ratio_chart(rows: list[dict], path: str, title: str = "") -> str | None:
    """Horizontal bars of every ratio with its target marked; returns None when drawn, else why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install '.[bench]'), so no chart was drawn"
    bars = [  # ratios, and single figures that carry a target (e.g. peak RSS / shard size)
        r if _number(r.get("ratio")) else dict(r, ratio=r["value"])
        for r in rows
        if _number(r.get("ratio")) or (_number(r.get("value")) and _number(r.get("target")))
    ]
    if not bars:
        return "no ratio rows to chart"
    height = max(2.5, 0.38 * len(bars) + 1.2)
    figure, axes = plt.subplots(figsize=(12, height))
    positions = list(range(len(bars)))[::-1]
    colours = [{"met": "#4c9a4c", "info": "#8c8c8c"}.get(_status(r), "#c8453b") for r in bars]
    axes.barh(positions, [r["ratio"] for r in bars], color=colours, height=0.65)
    for y, row in zip(positions, bars):
        if _number(row.get("target")):
            axes.plot([row["target"]] * 2, [y - 0.42, y + 0.42], color="black", linewidth=2)
        axes.text(row["ratio"], y, f" {row['ratio']:.2f}x", va="center", fontsize=8)
    axes.axvline(1.0, color="#555555", linestyle=":", linewidth=1)
    labels = [r["name"] + (f" [{r['device']}]" if r.get("device") not in (None, "cpu") else "") for r in bars]
    axes.set_yticks(positions, labels, fontsize=8)
    axes.set_xlabel("ratio ours / baseline (lower is better)\nblack tick = target, dotted line = parity (1.0x)")
    axes.set_title(title or "modeling_croc benchmarks: green = target met, red = missed, grey = no target", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return None
