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
"""Croc's three-stage training recipe on `transformers.Trainer`: stage settings, freezing, optimizer groups, logging."""

from dataclasses import dataclass

import torch
from transformers import Trainer

PROJECTOR_NAME = "multi_modal_projector"
COMPREHENSION_NAMES = ("prompt_pool", "reconstruction_head")


@dataclass(frozen=True)
class CrocStage:
    """One stage of the official recipe (docs: official scripts `pretrain_mlp.sh`, `pretrain_croc.sh`, `finetune.sh`).

    Batch sizes are per device x accumulation on 8 GPUs; `projector_learning_rate` is what the official trainer
    actually applies to every `mm_projector` parameter (1.5e-4 in all stages, overriding the scripts' 1e-3 in stage 1).
    """

    name: str
    croc_stage: bool  # run the comprehension objective
    trains: str  # "projector" or "all_but_vision"
    freeze_comprehension: bool  # keep prompt pool and reconstruction head fixed
    learning_rate: float
    projector_learning_rate: float
    per_device_batch_size: int
    gradient_accumulation_steps: int
    model_max_length: int
    image_aspect_ratio: str  # "square" (stage 1) or "pad"
    conversation_format: str  # "plain" (stage 1) or "vicuna_v1"
    deepspeed_config: str  # file name in examples/


STAGES = {
    "1": CrocStage("1", False, "projector", True, 1e-3, 1.5e-4, 8, 4, 2048, "square", "plain", "ds_zero2.json"),
    "1.5": CrocStage("1.5", True, "all_but_vision", False, 2e-5, 1.5e-4, 4, 4, 8192, "pad", "vicuna_v1", "ds_zero3.json"),
    "2": CrocStage("2", False, "all_but_vision", True, 2e-5, 1.5e-4, 8, 2, 4096, "pad", "vicuna_v1", "ds_zero3.json"),
}


def configure_stage(model, stage: CrocStage) -> dict[str, int]:
    """Set `croc_stage` and which parameters train; the vision tower is always frozen. Returns trainable counts."""
    if stage.croc_stage and not model.config.comprehension_modules:
        raise ValueError(
            f"Stage {stage.name} trains the prompt pool and reconstruction head, but this model was built without "
            f"them: load it with `from_pretrained(path, comprehension_modules=True)`."
        )
    model.config.croc_stage = stage.croc_stage
    for name, param in model.named_parameters():
        param.requires_grad_(_trains(name, stage))
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            group = _parameter_group(name)
            counts[group] = counts.get(group, 0) + param.numel()
    return counts


def _trains(name: str, stage: CrocStage) -> bool:
    if "vision_tower" in name:
        return False
    if stage.trains == "projector":
        return PROJECTOR_NAME in name
    if stage.freeze_comprehension and any(part in name for part in COMPREHENSION_NAMES):
        return False
    return True


def _parameter_group(name: str) -> str:
    for part in (PROJECTOR_NAME, *COMPREHENSION_NAMES, "language_model", "lm_head"):
        if part in name:
            return part
    return "other"


class CrocTrainer(Trainer):
    """`Trainer` with the official optimizer groups and the objective's two losses in the logs.

    - Parameters whose name contains `multi_modal_projector` get `projector_learning_rate` (four groups: decay /
      no decay x base / projector; the scheduler scales each from its own peak, as the official trainer does).
    - `lm_loss` and `reconstruction_loss` are averaged between logging steps and logged beside `loss`.
    - Under gradient accumulation the LM loss is normalised by Trainer's `num_items_in_batch`, while the
      reconstruction loss is a per-micro-batch mean: it is rescaled so that each optimizer step sees the mean over
      micro-batches (and over devices), exactly like an un-accumulated batch.
    """

    def __init__(self, *args, projector_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.projector_learning_rate = projector_learning_rate
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_counts: dict[str, int] = {}

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.projector_learning_rate is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay_names = set(self.get_decay_parameter_names(opt_model))
        groups = {}
        for name, param in opt_model.named_parameters():
            if not param.requires_grad:
                continue
            key = (name in decay_names, PROJECTOR_NAME in name)
            groups.setdefault(key, []).append(param)
        param_groups = []
        for (decays, is_projector), params in sorted(groups.items()):
            group = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
            if is_projector:
                group["lr"] = self.projector_learning_rate
            param_groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        reconstruction = getattr(outputs, "reconstruction_loss", None)
        loss_is_normalised = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        if model.training and reconstruction is not None and loss_is_normalised:
            device_scale = self._device_loss_scale()
            loss = loss - reconstruction * device_scale + reconstruction / self.current_gradient_accumulation_steps
        if model.training:
            lm_loss = getattr(outputs, "lm_loss", None)
            if lm_loss is not None:
                scale = self.current_gradient_accumulation_steps if loss_is_normalised else 1
                self._track("lm_loss", lm_loss.detach() * scale)
            if reconstruction is not None:
                self._track("reconstruction_loss", reconstruction.detach())
        return (loss, outputs) if return_outputs else loss

    def _device_loss_scale(self) -> int:
        """The factor `Trainer.compute_loss` multiplied the loss by for token averaging across devices."""
        if not self.args.average_tokens_across_devices:
            return 1
        return self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu

    def _track(self, name: str, value: torch.Tensor) -> None:
        self._metric_sums[name] = self._metric_sums.get(name, 0) + value.float()
        self._metric_counts[name] = self._metric_counts.get(name, 0) + 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the objective's parts
            for name, total in self._metric_sums.items():
                mean = self.accelerator.reduce(total / self._metric_counts[name], reduction="mean")
                logs[name] = round(float(mean), 6)
            self._metric_sums.clear()
            self._metric_counts.clear()
        super().log(logs, start_time)


__all__ = ["STAGES", "CrocStage", "CrocTrainer", "configure_stage"]
