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
"""Comprehension stage: a training step (forward + backward) with Croc's objective on vs off, same model."""

import common
import torch

TARGET = 1.25
LABELS = {"ours_label": "objective on", "baseline_label": "objective off"}


def settings(quick: bool) -> dict:
    if quick:
        return {"hungarian_repeats": 2, "nearest_repeats": 1, "memory_repeats": 1}
    return {"hungarian_repeats": 5, "nearest_repeats": 3, "memory_repeats": 2}


def build(quick: bool, device: str = "cpu", dtype=torch.float32):
    """The inference-size Croc in train mode (dropout on, as in training) and a labelled batch of 2."""
    model = common.build_croc(quick, device=device, dtype=dtype).train()
    batch = common.make_batch(model.config, quick, device=device, dtype=dtype)
    return model, batch


def step_call(model, batch: dict, objective: str):
    """One forward + backward; `objective` is "off", or the pool matching ("hungarian"/"nearest") with it on."""

    def call():
        model.config.croc_stage = objective != "off"
        if objective != "off":
            model.config.pool_matching = objective
        loss = model(**batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    return call


def memory_workload(objective: str, quick: bool, device: str = "cpu", dtype: str = "float32"):
    model, batch = build(quick, device, common.torch_dtype(dtype))
    return step_call(model, batch, objective)


def device_rows(quick: bool, device: str, dtype) -> list[dict]:
    plan = settings(quick)
    name = common.dtype_name(dtype)
    where = {"device": device, "dtype": name}
    model, batch = build(quick, device, dtype)
    replaced = model.config.num_replaced_tokens
    pool = model.config.prompt_pool_size
    rows = []
    for objective, target in (("hungarian", TARGET), ("nearest", None)):
        timed = common.compare_times(
            step_call(model, batch, objective),
            step_call(model, batch, "off"),
            plan[f"{objective}_repeats"],
            warmup=1 if objective == "hungarian" else 0,  # the first comparison already warmed the model up
            device=device,
        )
        labels = {**LABELS, "ours_label": f"objective on ({objective})"}
        note = f"{replaced} of {model.config.num_image_tokens} tokens per image matched to a pool of {pool}"
        rows.append(
            common.ratio_row(f"comprehension/train step ({objective})", timed, target, "s", note=note, **where, **labels)
        )
    shared = {"quick": quick, "device": device, "dtype": name}
    memory = common.compare_peak_memory(
        memory_workload, {"objective": "hungarian", **shared}, {"objective": "off", **shared}, plan["memory_repeats"], device
    )
    rows.append(
        common.ratio_row(
            "comprehension/train step peak memory (hungarian)", memory, TARGET, "MiB", note="forward + backward",
            **where, **LABELS,
        )
    )
    return rows


def run(quick: bool = False) -> list[dict]:
    rows = []
    for device, dtype in common.devices():
        rows += device_rows(quick, device, dtype)
    return rows
