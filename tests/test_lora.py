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
"""LoRA on Croc and X-Former: targets, Trainer training, accumulation, checkpointing, resume, reload and merge."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import (
    REPO_ROOT,
    TinyImageTextDataset,
    collate_tiny_batch,
    image_prompt,
    pad_batch,
    random_pixels,
    tiny_croc_model,
)
from conftest import tiny_training_args as training_args
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForImageTextToText, Trainer

from modeling_croc import CrocForConditionalGeneration
from modeling_croc.peft_croc import (
    croc_lora_config,
    lora_module_names,
    qlora_available,
    qlora_quantization_config,
    xformer_lora_config,
)

LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------------------------------------------- data




def lora_model(seed=0, **config_overrides):
    """A tiny Croc wrapped with the package's LoRA config (no dropout; B initialised non-zero unless told)."""
    settings = dict(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False)
    settings.update(config_overrides)
    return get_peft_model(tiny_croc_model(seed), croc_lora_config(**settings))


def probe_inputs(config, seed=1):
    rows = [image_prompt(config, [5, 6], [7, 8, 9]), image_prompt(config, [10], [11, 12])]
    ids, mask = pad_batch(rows)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=random_pixels(config, 2, seed=seed))


def logits_of(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


# ---------------------------------------------------------------------------------------------------- targets


def test_croc_lora_config_adapts_every_lm_projection_and_nothing_in_the_tower():
    peft_model = lora_model()
    names = lora_module_names(peft_model)
    layers = peft_model.get_base_model().config.text_config.num_hidden_layers
    assert len(names) == layers * len(LM_PROJECTIONS)
    assert all(name.startswith("model.language_model.layers.") for name in names)
    assert {name.rsplit(".", 1)[1] for name in names} == set(LM_PROJECTIONS)
    trainable = {name for name, param in peft_model.named_parameters() if param.requires_grad}
    assert all("lora_" in name or "multi_modal_projector.modules_to_save" in name for name in trainable)
    assert any("multi_modal_projector.modules_to_save.default.linear_1" in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable)


def test_croc_lora_config_options():
    config = croc_lora_config(train_projector=False, mlp=False)
    assert config.modules_to_save is None
    peft_model = get_peft_model(tiny_croc_model(), config)
    adapted = {name.rsplit(".", 1)[1] for name in lora_module_names(peft_model)}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj"}
    with pytest.raises(ValueError, match="at least one"):
        croc_lora_config(attention=False, mlp=False)


def test_llava_style_lora_config_verbatim_from_the_docs():
    # Section 11 of the transformers v5 notes, written for LLaVA: Croc keeps LLaVA's module names.
    model = tiny_croc_model()
    model.activation_checkpointing_enable()
    lm_targets = r"^model\.language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
    cfg = LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM",
                     target_modules=lm_targets, modules_to_save=["multi_modal_projector"])
    model = get_peft_model(model, cfg)
    assert lora_module_names(model) == lora_module_names(lora_model())
    model.train()
    config = model.get_base_model().config
    inputs = probe_inputs(config)
    ignored = (inputs["attention_mask"] == 0) | (inputs["input_ids"] == config.image_token_id)
    loss = model(**inputs, labels=inputs["input_ids"].masked_fill(ignored, -100)).loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert all(grad is not None for name, grad in grads.items() if "lora_B" in name or "modules_to_save" in name)


def test_xformer_lora_configs_apply_to_the_expected_modules():
    from test_xformer_helpers import tiny_config

    from modeling_croc import XFormerForConditionalGeneration, XFormerModel

    torch.manual_seed(0)
    stage1_model = XFormerModel(tiny_config(with_text=False))
    stage1 = get_peft_model(stage1_model, xformer_lora_config(stage1_model))
    names = lora_module_names(stage1)
    assert {name.split(".")[0] for name in names} == {"qformer", "dual_cross_attention"}
    assert sum(name.startswith("qformer.") for name in names) == 20  # 2 layers, one with cross-attention
    assert sum(name.startswith("dual_cross_attention.") for name in names) == 12  # 2 steps x 6 linears
    assert any(".crossattention.attention.query" in name for name in names)

    heads = xformer_lora_config(tiny_config(with_text=False), train_heads=True, dual_cross_attention=False)
    stage1 = get_peft_model(XFormerModel(tiny_config(with_text=False)), heads)
    assert {name.split(".")[0] for name in lora_module_names(stage1)} == {"qformer"}
    assert set(heads.modules_to_save) == {"vision_projection", "text_projection", "itm_head"}

    stage2_model = XFormerForConditionalGeneration(tiny_config())
    stage2 = get_peft_model(stage2_model, xformer_lora_config(stage2_model))
    names = lora_module_names(stage2)
    assert all(name.startswith("language_model.model.decoder.layers.") for name in names)
    assert {name.rsplit(".", 1)[1] for name in names} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    trainable = {name.split(".")[2] for name, p in stage2.named_parameters() if p.requires_grad}
    assert trainable == {"language_model", "language_projection"}

    projection = xformer_lora_config(tiny_config(), stage2_target="language_projection")
    stage2 = get_peft_model(XFormerForConditionalGeneration(tiny_config()), projection)
    assert lora_module_names(stage2) == ["language_projection"]
    with pytest.raises(ValueError, match="stage2_target"):
        xformer_lora_config(tiny_config(), stage2_target="vision_model")


def test_xformer_lora_models_get_gradients_only_in_their_adapters():
    from test_xformer_helpers import tiny_batch, tiny_config

    from modeling_croc import XFormerForConditionalGeneration, XFormerModel

    torch.manual_seed(0)
    batch = tiny_batch()
    text = torch.randint(3, 90, (4, 6))
    for model, inputs in ((XFormerModel(tiny_config(with_text=False)), batch),
                          (XFormerForConditionalGeneration(tiny_config()),
                           dict(pixel_values=batch["pixel_values"], input_ids=text, labels=text))):
        peft_model = get_peft_model(model, xformer_lora_config(model, init_lora_weights=False))
        peft_model.train()
        peft_model(**inputs).loss.backward()
        grads = {name: p.grad for name, p in peft_model.named_parameters() if p.grad is not None}
        assert grads and all("lora_" in name or "modules_to_save" in name for name in grads)
        assert all(grads.get(name) is not None for name, p in peft_model.named_parameters() if "lora_" in name)


def test_xformer_lora_config_detects_the_stage_from_a_config():
    from test_xformer_helpers import tiny_config

    assert xformer_lora_config(tiny_config()).task_type == "CAUSAL_LM"
    assert xformer_lora_config(tiny_config(with_text=False)).task_type is None


# ---------------------------------------------------------------------------------------------------- Trainer


def test_lora_trains_and_changes_only_lora_and_projector_weights(tmp_path):
    peft_model = lora_model(init_lora_weights=True)  # standard init: B = 0, the adapter starts as a no-op
    base = peft_model.get_base_model()
    before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    dataset = TinyImageTextDataset(base.config, size=4)
    eval_batch = collate_tiny_batch([dataset[i] for i in range(len(dataset))])
    trainer = Trainer(
        model=peft_model, args=training_args(tmp_path, max_steps=8, learning_rate=3e-2), train_dataset=dataset,
        data_collator=collate_tiny_batch,
    )
    with torch.no_grad():
        peft_model.eval()
        start = peft_model(**eval_batch).loss.item()
    trainer.train()
    with torch.no_grad():
        peft_model.eval()
        end = peft_model(**eval_batch).loss.item()
    assert end < start - 0.1, (start, end)

    after = base.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "nothing trained"
    assert all("lora_" in name or ".modules_to_save." in name for name in changed), sorted(changed)[:5]
    assert any(".modules_to_save." in name for name in changed)
    assert any("lora_B" in name for name in changed)
    untouched = [name for name in before if "vision_tower" in name or "original_module" in name]
    assert untouched and all(torch.equal(before[name], after[name]) for name in untouched)


def test_trainer_column_filtering_keeps_pixel_values(tmp_path):
    peft_model = lora_model()
    trainer = Trainer(model=peft_model, args=training_args(tmp_path, remove_unused_columns=True))
    seen = {}

    def recording_collate(samples):
        seen.update(samples[0])
        return collate_tiny_batch(samples)

    dataset = TinyImageTextDataset(peft_model.get_base_model().config, size=2)
    batch = trainer._get_collator_with_removed_columns(recording_collate)([dataset[0], dataset[1]])
    assert {"input_ids", "labels", "pixel_values"} <= set(seen) and "id" not in seen
    assert batch["pixel_values"].shape[0] == 2
    assert trainer.model_accepts_loss_kwargs  # Trainer will pass num_items_in_batch


def one_sgd_step(tmp_path, batch_size, accumulation):
    peft_model = lora_model()
    base = peft_model.get_base_model()
    dataset = TinyImageTextDataset(base.config, size=4)
    args = training_args(
        tmp_path / f"b{batch_size}", per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
        max_steps=1, optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", weight_decay=0.0,
        max_grad_norm=0.0,
    )
    start = {name: p.detach().clone() for name, p in peft_model.named_parameters() if p.requires_grad}
    Trainer(model=peft_model, args=args, train_dataset=dataset, data_collator=collate_tiny_batch).train()
    return {name: p.detach() - start[name] for name, p in peft_model.named_parameters() if p.requires_grad}


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    supervised = [int((row["labels"] != -100).sum()) for row in TinyImageTextDataset(tiny_croc_model().config, 4).rows]
    assert len(set(supervised)) == 4  # unequal token counts: a per-micro-batch mean would differ
    big = one_sgd_step(tmp_path, batch_size=4, accumulation=1)
    accumulated = one_sgd_step(tmp_path, batch_size=2, accumulation=2)
    assert big.keys() == accumulated.keys()
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], atol=1e-6, rtol=1e-5, msg=name)
    assert any(step.abs().max() > 0 for step in big.values())


def lora_gradients(activation_checkpointing: bool):
    model = tiny_croc_model()
    if activation_checkpointing:
        model.activation_checkpointing_enable()
        assert model.is_activation_checkpointing
    peft_model = get_peft_model(model, croc_lora_config(r=4, lora_dropout=0.0, init_lora_weights=False))
    peft_model.train()
    dataset = TinyImageTextDataset(model.config, size=2)
    peft_model(**collate_tiny_batch([dataset[0], dataset[1]])).loss.backward()
    return {name: p.grad for name, p in peft_model.named_parameters() if p.requires_grad}


def test_activation_checkpointing_with_lora_gives_the_same_lora_gradients():
    plain = lora_gradients(activation_checkpointing=False)
    checkpointed = lora_gradients(activation_checkpointing=True)
    assert plain.keys() == checkpointed.keys()
    for name, grad in checkpointed.items():
        assert grad is not None, f"{name} got no gradient under activation checkpointing"
        torch.testing.assert_close(grad, plain[name], atol=1e-6, rtol=1e-5, msg=name)
    assert all(grad.abs().sum() > 0 for name, grad in checkpointed.items() if "lora_A" in name)


def logged_losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_resuming_from_a_checkpoint_continues_with_the_same_losses(tmp_path):
    def make_trainer(output):
        peft_model = lora_model(lora_dropout=0.1)  # dropout: the restored RNG state matters too
        dataset = TinyImageTextDataset(peft_model.get_base_model().config, size=8)
        args = training_args(output, max_steps=4, save_strategy="steps", save_steps=2)
        return Trainer(model=peft_model, args=args, train_dataset=dataset, data_collator=collate_tiny_batch)

    full = make_trainer(tmp_path / "full")
    full.train()
    resumed = make_trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    expected = logged_losses(full)
    assert len(expected) == 4 and len(set(expected)) == 4
    assert logged_losses(resumed)[-2:] == pytest.approx(expected[2:], abs=1e-6)


# ---------------------------------------------------------------------------------------- save / load / merge


def test_adapter_reload_and_merge_give_the_same_logits(tmp_path):
    peft_model = lora_model(seed=0)
    inputs = probe_inputs(peft_model.get_base_model().config)
    with torch.no_grad():  # make the projector copy differ from the base projector
        peft_model.get_base_model().model.multi_modal_projector.modules_to_save["default"].linear_1.bias.add_(0.1)
    expected = logits_of(peft_model, inputs)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(adapter))
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["modules_to_save"] == ["multi_modal_projector"]

    reloaded = PeftModel.from_pretrained(tiny_croc_model(seed=0), adapter)
    torch.testing.assert_close(logits_of(reloaded, inputs), expected, atol=0, rtol=0)
    base = tiny_croc_model(seed=0)
    base.load_adapter(str(adapter))
    torch.testing.assert_close(logits_of(base, inputs), expected, atol=0, rtol=0)
    assert not torch.equal(logits_of(tiny_croc_model(seed=0), inputs), expected)

    merged = reloaded.merge_and_unload()
    assert type(merged) is CrocForConditionalGeneration
    assert not any("lora_" in name or "modules_to_save" in name for name in merged.state_dict())
    torch.testing.assert_close(logits_of(merged, inputs), expected, atol=1e-4, rtol=1e-4)
    merged.save_pretrained(tmp_path / "merged")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert type(again) is CrocForConditionalGeneration
    torch.testing.assert_close(logits_of(again, inputs), logits_of(merged, inputs), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------- QLoRA


def test_qlora_quantizes_only_the_language_model_linears():
    # Runs on CPU: checks the skip list with the same matcher transformers' bitsandbytes integration uses.
    from test_xformer_helpers import tiny_config
    from transformers.quantizers.quantizers_utils import should_convert_module

    from modeling_croc import XFormerForConditionalGeneration

    skip = qlora_quantization_config().llm_int8_skip_modules
    for model, language_model in ((tiny_croc_model(), "model.language_model."),
                                  (XFormerForConditionalGeneration(tiny_config()), "language_model.model.")):
        linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
        quantized = [name for name in linears if should_convert_module(name, skip)]
        assert quantized == [name for name in linears if name.startswith(language_model)]


@pytest.mark.skipif(not qlora_available(), reason="QLoRA needs bitsandbytes and a CUDA GPU; this run has neither")
def test_qlora_trains_a_4bit_croc(tmp_path):
    from peft import prepare_model_for_kbit_training

    tiny_croc_model().save_pretrained(tmp_path / "base")
    model = CrocForConditionalGeneration.from_pretrained(
        tmp_path / "base", quantization_config=qlora_quantization_config(torch.float32), device_map={"": 0}
    )
    model = get_peft_model(prepare_model_for_kbit_training(model), croc_lora_config(r=4))
    batch = {k: v.to(0) for k, v in collate_tiny_batch(list(TinyImageTextDataset(model.get_base_model().config, 2))).items()}
    model(**batch).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)


# ---------------------------------------------------------------------------------------------------- example


def test_the_example_runs_without_arguments_on_the_embedded_tiny_model(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "finetune_lora.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = tmp_path / "croc-lora"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "eval_results.json"} <= set(
        os.listdir(output)
    )
    eval_loss = json.loads((output / "eval_results.json").read_text())["eval_loss"]
    assert 0 < eval_loss < 20
    adapter_config = json.loads((output / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] == ["multi_modal_projector"]
    assert adapter_config["target_modules"].startswith(r"^model\.language_model")
    card = (output / "README.md").read_text()
    assert "library_name: peft" in card and "held-out loss" in card
