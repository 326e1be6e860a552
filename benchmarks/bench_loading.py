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
"""Loading: `from_pretrained` time and peak memory of a Croc checkpoint vs the same weights saved as LLaVA."""

import os
import tempfile

import common

TARGET = 1.05
LABELS = {"ours_label": "Croc checkpoint", "baseline_label": "same weights as LLaVA"}


def settings(quick: bool) -> dict:
    return {"time_repeats": 2, "memory_repeats": 1} if quick else {"time_repeats": 7, "memory_repeats": 2}


def save_checkpoints(quick: bool, folder: str) -> dict:
    """Save a Croc model in the converter's output format and its LLaVA twin under `folder`.

    Like a converted release, the Croc files keep the prompt pool and reconstruction head while its config says
    `comprehension_modules=False`, so an inference load skips them.
    """
    croc = common.build_croc(quick)
    llava = common.llava_twin(croc)
    paths = {"croc": os.path.join(folder, "croc"), "llava": os.path.join(folder, "llava")}
    croc.config.comprehension_modules = False
    croc.save_pretrained(paths["croc"])
    llava.save_pretrained(paths["llava"])
    return paths


def model_class(variant: str):
    if variant == "croc":
        from modeling_croc import CrocForConditionalGeneration

        return CrocForConditionalGeneration
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration


def load_call(variant: str, path: str, device: str = "cpu", dtype: str = "float32"):
    """A zero-argument `from_pretrained` of `path` onto `device` in `dtype`."""
    cls = model_class(variant)
    options = {"dtype": common.torch_dtype(dtype)}
    if device != "cpu":
        options["device_map"] = device

    def call():
        return cls.from_pretrained(path, **options)

    return call


def memory_workload(variant: str, path: str, device: str = "cpu", dtype: str = "float32"):
    """Memory-probe setup: nothing built yet; the workload is the load itself."""
    return load_call(variant, path, device, dtype)


def checkpoint_mib(path: str) -> float:
    return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path)) / common.MIB


def device_rows(quick: bool, paths: dict, device: str, dtype) -> list[dict]:
    plan = settings(quick)
    name = common.dtype_name(dtype)
    where = {"device": device, "dtype": name, **LABELS}
    sizes = f"checkpoints {checkpoint_mib(paths['croc']):.1f} vs {checkpoint_mib(paths['llava']):.1f} MiB on disk"
    timed = common.compare_times(
        load_call("croc", paths["croc"], device, name),
        load_call("llava", paths["llava"], device, name),
        plan["time_repeats"],
        device=device,
    )
    memory = common.compare_peak_memory(
        memory_workload,
        {"variant": "croc", "path": paths["croc"], "device": device, "dtype": name},
        {"variant": "llava", "path": paths["llava"], "device": device, "dtype": name},
        plan["memory_repeats"],
        device,
    )
    return [
        common.ratio_row("loading/from_pretrained time", timed, TARGET, "s", note=sizes, **where),
        common.ratio_row("loading/from_pretrained peak memory", memory, TARGET, "MiB", note=sizes, **where),
    ]


def run(quick: bool = False) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="croc-bench-loading-") as folder:
        paths = save_checkpoints(quick, folder)
        for device, dtype in common.devices():
            rows += device_rows(quick, paths, device, dtype)
    return rows
