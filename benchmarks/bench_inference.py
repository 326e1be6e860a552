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
"""Inference: Croc forward and `generate` vs transformers' LLaVA with the same weights, time and peak memory."""

import gc

import common
import torch

TARGET = 1.05
LABELS = {"ours_label": "Croc", "baseline_label": "transformers LLaVA"}


def settings(quick: bool) -> dict:
    """Repeats and generation length: enough repeats for a stable median, few enough for the 10-minute budget."""
    if quick:
        return {"forward_repeats": 2, "generate_repeats": 2, "memory_repeats": 1, "new_tokens": 3}
    return {"forward_repeats": 5, "generate_repeats": 5, "memory_repeats": 2, "new_tokens": 16}


def build_pair(quick: bool, device: str = "cpu", dtype=torch.float32):
    """Croc, its LLaVA twin and a batch of 2 prompts with images, all on `device` in `dtype`."""
    croc = common.build_croc(quick, device=device, dtype=dtype)
    llava = common.llava_twin(croc)
    batch = common.make_batch(croc.config, quick, device=device, dtype=dtype)
    return croc, llava, common.without(batch, "labels")


def forward_call(model, inputs: dict):
    """One no-grad forward returning the logits of every position (LLaVA's and Croc's default)."""

    def call():
        with torch.inference_mode():
            return model(**inputs).logits

    return call


def generate_call(model, inputs: dict, new_tokens: int, shapes: list | None = None):
    """Greedy `generate` of exactly `new_tokens` tokens (min = max, so both models do the same work); the output
    shape is appended to `shapes` when given."""

    def call():
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        if shapes is not None:
            shapes.append(tuple(output.shape))
        return output

    return call


def memory_workload(variant: str, mode: str, quick: bool, device: str = "cpu", dtype: str = "float32"):
    """Memory-probe setup: build only `variant` ("croc" or "llava") and return its forward or generate call."""
    croc, llava, inputs = build_pair(quick, device, common.torch_dtype(dtype))
    model = croc if variant == "croc" else llava
    del croc, llava
    gc.collect()
    if mode == "forward":
        return forward_call(model, inputs)
    return generate_call(model, inputs, settings(quick)["new_tokens"])


def time_rows(quick: bool, device: str, dtype) -> list[dict]:
    plan = settings(quick)
    croc, llava, inputs = build_pair(quick, device, dtype)
    where = {"device": device, "dtype": common.dtype_name(dtype), **LABELS}
    forward = common.compare_times(
        forward_call(croc, inputs), forward_call(llava, inputs), plan["forward_repeats"], device=device
    )
    new, shapes = plan["new_tokens"], []
    generate = common.compare_times(
        generate_call(croc, inputs, new, shapes), generate_call(llava, inputs, new, shapes), plan["generate_repeats"],
        device=device,
    )
    batch = inputs["input_ids"].shape[0]
    throughput = f"{batch * new / generate['ours']:.1f} vs {batch * new / generate['baseline']:.1f} new tok/s"
    length_note = "" if len(set(shapes)) == 1 else f"; OUTPUT SHAPES DIFFER: {sorted(set(shapes))}"
    seq = inputs["input_ids"].shape[1]
    return [
        common.ratio_row("inference/forward time", forward, TARGET, "s", note=f"batch {batch} x {seq} tokens", **where),
        common.ratio_row(
            "inference/generate time", generate, TARGET, "s", note=f"{new} new tokens; {throughput}{length_note}", **where
        ),
    ]


def memory_rows(quick: bool, device: str, dtype) -> list[dict]:
    repeats = settings(quick)["memory_repeats"]
    where = {"device": device, "dtype": common.dtype_name(dtype), **LABELS}
    rows = []
    for mode in ("forward", "generate"):
        shared = {"mode": mode, "quick": quick, "device": device, "dtype": common.dtype_name(dtype)}
        measured = common.compare_peak_memory(
            memory_workload, {"variant": "croc", **shared}, {"variant": "llava", **shared}, repeats, device
        )
        how = "peak CUDA allocation above the loaded model" if device != "cpu" else "peak RSS above the loaded model"
        rows.append(common.ratio_row(f"inference/{mode} peak memory", measured, TARGET, "MiB", note=how, **where))
    return rows


def run(quick: bool = False) -> list[dict]:
    rows = []
    for device, dtype in common.devices():
        rows += time_rows(quick, device, dtype)
        rows += memory_rows(quick, device, dtype)
    return rows
