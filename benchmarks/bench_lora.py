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
"""LoRA: a LoRA training step vs a full fine-tuning step of the same Croc model, and trainable-parameter counts."""

import common
import torch

# A LoRA step should never cost more than the full fine-tuning step it replaces.
TARGET = 1.0
LABELS = {"ours_label": "LoRA r=8", "baseline_label": "full fine-tuning"}
LORA_TARGETS = r"^model\.language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def settings(quick: bool) -> dict:
    return {"time_repeats": 2, "memory_repeats": 1} if quick else {"time_repeats": 4, "memory_repeats": 2}


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS)


def build(variant: str, quick: bool, device: str = "cpu", dtype=torch.float32):
    """(model in train mode, AdamW over its trainable parameters) for "full" or "lora" (peft on the same model)."""
    model = common.build_croc(quick, device=device, dtype=dtype).train()
    if variant == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config())
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trainable, lr=1e-5)


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def step_call(model, optimizer, batch: dict):
    """One instruction-tuning step: forward with labels, backward, AdamW update, gradients cleared."""

    def call():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return call


def memory_workload(variant: str, quick: bool, device: str = "cpu", dtype: str = "float32"):
    """Memory-probe setup; the probed step is the first one, so it includes creating AdamW's state."""
    model, optimizer = build(variant, quick, device, common.torch_dtype(dtype))
    batch = common.make_batch(model.config, quick, device=device, dtype=common.torch_dtype(dtype))
    return step_call(model, optimizer, batch)


def device_rows(quick: bool, device: str, dtype) -> list[dict]:
    plan = settings(quick)
    name = common.dtype_name(dtype)
    where = {"device": device, "dtype": name}
    full, full_optimizer = build("full", quick, device, dtype)
    lora, lora_optimizer = build("lora", quick, device, dtype)
    batch = common.make_batch(full.config, quick, device=device, dtype=dtype)
    timed = common.compare_times(
        step_call(lora, lora_optimizer, batch), step_call(full, full_optimizer, batch), plan["time_repeats"], device=device
    )
    shared = {"quick": quick, "device": device, "dtype": name}
    memory = common.compare_peak_memory(
        memory_workload, {"variant": "lora", **shared}, {"variant": "full", **shared}, plan["memory_repeats"], device
    )
    lora_count, full_count = trainable_parameters(lora), trainable_parameters(full)
    share = f"{100 * lora_count / full_count:.2f}% of the full model's trainable parameters"
    return [
        common.ratio_row("lora/train step time", timed, TARGET, "s", note="forward + backward + AdamW", **where, **LABELS),
        common.ratio_row(
            "lora/train step peak memory", memory, TARGET, "MiB", note="first step, incl. AdamW state", **where, **LABELS
        ),
        common.value_row("lora/trainable parameters (LoRA)", lora_count, "params", note=share, **where),
        common.value_row("lora/trainable parameters (full)", full_count, "params", **where),
    ]


def run(quick: bool = False) -> list[dict]:
    rows = []
    for device, dtype in common.devices():
        rows += device_rows(quick, device, dtype)
    return rows
