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
"""Ready-made PEFT LoRA / QLoRA settings for Croc and X-Former, with the vision towers always left out."""

import importlib.util
import re

import torch

# Linear layers of the decoder-only LMs Croc and X-Former use: Llama-like (Vicuna, Mistral, Qwen) and OPT.
LLAMA_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
OPT_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
OPT_MLP_PROJECTIONS = ("fc1", "fc2")

# Croc module names are LLaVA's: LoRA goes into `model.language_model`, never `model.vision_tower`.
CROC_LANGUAGE_MODEL_PREFIX = r"model\.language_model"
CROC_PROJECTOR = "multi_modal_projector"

# BERT-style linear layers of the Q-Former and of X-Former's dual cross-attention block.
QFORMER_ATTENTION_LINEARS = ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                             "attention.output.dense")
QFORMER_MLP_LINEARS = ("intermediate.dense", "output.dense", "intermediate_query.dense", "output_query.dense")
XFORMER_STAGE1_HEADS = ("vision_projection", "text_projection", "itm_head")
XFORMER_STAGE2_TARGETS = ("language_model", "language_projection")
# Modules QLoRA keeps unquantized. transformers matches these from the start of the qualified name (or as a suffix).
QLORA_FULL_PRECISION_MODULES = (
    "model.vision_tower", "model.multi_modal_projector", "lm_head", "reconstruction_head",  # Croc
    "vision_model", "mae_encoder", "mae_decoder", "qformer", "dual_cross_attention", "language_projection",  # X-Former
    "language_model.lm_head",
)


def _alternatives(names) -> str:
    """`(a|b|c)` with every name regex-escaped, duplicates dropped in order."""
    unique = list(dict.fromkeys(names))
    return "(" + "|".join(re.escape(name) for name in unique) + ")"


def language_model_target_regex(prefix: str, attention: bool = True, mlp: bool = True) -> str:
    """Anchored regex for PEFT's `target_modules` selecting the LM projections under `prefix`.

    PEFT full-matches a string `target_modules` against each module's qualified name, so the pattern below selects
    exactly the attention / MLP projections of the decoder layers under `prefix` (Llama and OPT names), and nothing
    in a vision tower, even where the tower uses the same leaf names (CLIP's `q_proj`, `fc1`, ...).

    Args:
        prefix (`str`): regex for the language model's qualified name, e.g. `r"model\\.language_model"` (Croc) or
            `r"language_model"` (X-Former stage 2).
        attention (`bool`, *optional*, defaults to `True`): include `q_proj`, `k_proj`, `v_proj`, `o_proj`/`out_proj`.
        mlp (`bool`, *optional*, defaults to `True`): include `gate_proj`, `up_proj`, `down_proj` / `fc1`, `fc2`.
    """
    names = []
    if attention:
        names += [*LLAMA_ATTENTION_PROJECTIONS, *OPT_ATTENTION_PROJECTIONS]
    if mlp:
        names += [*LLAMA_MLP_PROJECTIONS, *OPT_MLP_PROJECTIONS]
    if not names:
        raise ValueError("Select at least one of attention or mlp projections for LoRA.")
    return rf"^{prefix}\..*\.{_alternatives(names)}$"


def croc_lora_config(
    r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    train_projector: bool = True,
    attention: bool = True,
    mlp: bool = True,
    **lora_kwargs,
):
    """A `peft.LoraConfig` for fine-tuning [`CrocForConditionalGeneration`] (the LLaVA recipe).

    LoRA adapters go into the language model's attention and MLP projections, selected by an anchored regex on the
    qualified module names (`model.language_model.layers.N.self_attn.q_proj`, ...), so the CLIP vision tower, whose
    layers share those leaf names, never gets an adapter. With `train_projector` the whole multi-modal projector is
    trained and saved with the adapter (`modules_to_save`); the prompt pool and reconstruction head of the
    comprehension stage stay frozen (they are unused at fine-tuning time).

    QLoRA: load the base model 4-bit with `quantization_config=qlora_quantization_config()` (needs `bitsandbytes`
    and a CUDA GPU; see `qlora_available()`), call `peft.prepare_model_for_kbit_training(model)`, then
    `peft.get_peft_model(model, croc_lora_config())` as usual. The quantization config keeps the vision tower,
    projector and heads in full precision.

    Args:
        r (`int`, *optional*, defaults to 16): LoRA rank.
        lora_alpha (`int`, *optional*, defaults to 32): LoRA scaling numerator (scale = `lora_alpha / r`).
        lora_dropout (`float`, *optional*, defaults to 0.05): dropout on the LoRA branch input.
        train_projector (`bool`, *optional*, defaults to `True`): fully train the projector through `modules_to_save`.
        attention (`bool`, *optional*, defaults to `True`): adapt `q_proj`, `k_proj`, `v_proj`, `o_proj`.
        mlp (`bool`, *optional*, defaults to `True`): adapt `gate_proj`, `up_proj`, `down_proj`.
        lora_kwargs: any other `peft.LoraConfig` argument (e.g. `use_rslora=True`, `init_lora_weights="gaussian"`).

    Returns:
        `peft.LoraConfig` with `task_type="CAUSAL_LM"`.
    """
    from peft import LoraConfig

    lora_kwargs.setdefault("task_type", "CAUSAL_LM")
    modules_to_save = list(lora_kwargs.pop("modules_to_save", None) or [])
    if train_projector and CROC_PROJECTOR not in modules_to_save:
        modules_to_save.append(CROC_PROJECTOR)
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=language_model_target_regex(CROC_LANGUAGE_MODEL_PREFIX, attention, mlp),
        modules_to_save=modules_to_save or None,
        **lora_kwargs,
    )


def xformer_stage1_target_regex(qformer: bool = True, dual_cross_attention: bool = True, mlp: bool = True) -> str:
    """Anchored regex selecting the Q-Former and / or dual cross-attention linear layers of an X-Former.

    Args:
        qformer (`bool`, *optional*, defaults to `True`): the Q-Former's self- and cross-attention (and FFN) layers.
        dual_cross_attention (`bool`, *optional*, defaults to `True`): both steps of every dual cross-attention layer.
        mlp (`bool`, *optional*, defaults to `True`): also the BERT FFN layers (`intermediate(_query)`,
            `output(_query)`).
    """
    linears = list(QFORMER_ATTENTION_LINEARS) + (list(QFORMER_MLP_LINEARS) if mlp else [])
    # self-attention is `attention.attention.query`, cross-attention `crossattention.attention.query`
    linear_pattern = r"(cross)?" + _alternatives(linears)
    blocks = []
    if qformer:
        blocks.append(r"qformer\.encoder\.layer\.\d+")
    if dual_cross_attention:
        blocks.append(r"dual_cross_attention\.layers\.\d+\.(mae_from_queries|queries_from_mae)")
    if not blocks:
        raise ValueError("Select the Q-Former, the dual cross-attention block, or both.")
    return rf"^({'|'.join(blocks)})\.{linear_pattern}$"


def xformer_lora_config(
    model_or_config,
    r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    stage2_target: str = "language_model",
    train_projection: bool = True,
    train_heads: bool = False,
    qformer: bool = True,
    dual_cross_attention: bool = True,
    **lora_kwargs,
):
    """A `peft.LoraConfig` for an X-Former model; the stage is read from the model (or config) given.

    - Stage 1 ([`XFormerModel`]): LoRA on the Q-Former's attention/FFN linears and on both steps of the dual
      cross-attention block. The frozen CLIP and MAE encoders and the MAE decoder never get adapters. With
      `train_heads` the ITC/ITM heads (`vision_projection`, `text_projection`, `itm_head`) are fully trained.
    - Stage 2 ([`XFormerForConditionalGeneration`]): `stage2_target="language_model"` puts LoRA on the LLM's
      attention and MLP projections (OPT or Llama names) and, with `train_projection`, fully trains
      `language_projection`; `stage2_target="language_projection"` puts LoRA on the projection only.

    Train X-Former in fp32 or bf16, never fp16 (the Q-Former is kept in fp32 for this reason). QLoRA for stage 2
    works as for Croc (`qlora_quantization_config()`), quantizing only the LLM.

    Args:
        model_or_config: an X-Former model (stage 1 or 2) or an `XFormerConfig`; a config with `text_config` means
            stage 2.
        r (`int`, *optional*, defaults to 16): LoRA rank.
        lora_alpha (`int`, *optional*, defaults to 32): LoRA scaling numerator.
        lora_dropout (`float`, *optional*, defaults to 0.05): dropout on the LoRA branch input.
        stage2_target (`str`, *optional*, defaults to `"language_model"`): `"language_model"` or
            `"language_projection"` (stage 2 only).
        train_projection (`bool`, *optional*, defaults to `True`): stage 2 with the LLM targeted: fully train
            `language_projection` through `modules_to_save`.
        train_heads (`bool`, *optional*, defaults to `False`): stage 1: fully train the ITC/ITM heads.
        qformer (`bool`, *optional*, defaults to `True`): stage 1: adapt the Q-Former.
        dual_cross_attention (`bool`, *optional*, defaults to `True`): stage 1: adapt the dual cross-attention.
        lora_kwargs: any other `peft.LoraConfig` argument.

    Returns:
        `peft.LoraConfig` (`task_type="CAUSAL_LM"` in stage 2, no task type in stage 1).
    """
    from peft import LoraConfig

    modules_to_save = list(lora_kwargs.pop("modules_to_save", None) or [])
    if _is_xformer_stage2(model_or_config):
        if stage2_target not in XFORMER_STAGE2_TARGETS:
            raise ValueError(f"stage2_target must be one of {XFORMER_STAGE2_TARGETS}, got {stage2_target!r}")
        lora_kwargs.setdefault("task_type", "CAUSAL_LM")
        if stage2_target == "language_projection":
            target = r"^language_projection$"
        else:
            target = language_model_target_regex("language_model")
            if train_projection and "language_projection" not in modules_to_save:
                modules_to_save.append("language_projection")
    else:
        target = xformer_stage1_target_regex(qformer, dual_cross_attention)
        if train_heads:
            modules_to_save += [head for head in XFORMER_STAGE1_HEADS if head not in modules_to_save]
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target,
        modules_to_save=modules_to_save or None,
        **lora_kwargs,
    )


def _is_xformer_stage2(model_or_config) -> bool:
    """Stage 2 models have a `language_model`; a bare config is stage 2 when it carries a `text_config`."""
    if isinstance(model_or_config, torch.nn.Module):
        return hasattr(model_or_config, "language_model")
    return getattr(model_or_config, "text_config", None) is not None


def qlora_available() -> bool:
    """Whether 4-bit QLoRA can run here: `bitsandbytes` is installed and a CUDA GPU is visible."""
    return importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available()


def qlora_quantization_config(compute_dtype: torch.dtype = torch.bfloat16):
    """A 4-bit NF4 `BitsAndBytesConfig` for QLoRA that quantizes only the language model.

    Pass it as `quantization_config=` to `from_pretrained`, then `peft.prepare_model_for_kbit_training(model)` and
    `peft.get_peft_model(model, croc_lora_config())`. The vision tower, projector, LM head and the Croc / X-Former
    extra modules stay in full precision.

    Args:
        compute_dtype (`torch.dtype`, *optional*, defaults to `torch.bfloat16`): dtype of the 4-bit matmuls.
    """
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(QLORA_FULL_PRECISION_MODULES),
    )


def prepare_lora_model(model, lora_config=None, activation_checkpointing: bool = False, quantized: bool = False):
    """Wrap a Croc or X-Former model for LoRA training and return the `peft.PeftModel`.

    Args:
        model: a `CrocForConditionalGeneration`, `XFormerModel` or `XFormerForConditionalGeneration`.
        lora_config (`peft.LoraConfig`, *optional*): defaults to `croc_lora_config()` for Croc and
            `xformer_lora_config(model)` for X-Former.
        activation_checkpointing (`bool`, *optional*, defaults to `False`): enable activation checkpointing (input
            gradients are enabled so that the LoRA weights receive gradients through the checkpointed layers).
        quantized (`bool`, *optional*, defaults to `False`): the model was loaded in 4/8 bit; run
            `peft.prepare_model_for_kbit_training` first (QLoRA).
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if lora_config is None:
        is_xformer = getattr(model.config, "model_type", None) == "xformer"
        lora_config = xformer_lora_config(model) if is_xformer else croc_lora_config()
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=activation_checkpointing)
    elif activation_checkpointing:
        model.activation_checkpointing_enable()
    return get_peft_model(model, lora_config)


def lora_module_names(peft_model) -> list[str]:
    """Qualified names (relative to the wrapped model) of the modules that received a LoRA adapter.

    Args:
        peft_model: a `peft.PeftModel`.
    """
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    return [name for name, module in base.named_modules() if isinstance(module, LoraLayer)]


__all__ = [
    "croc_lora_config",
    "language_model_target_regex",
    "lora_module_names",
    "prepare_lora_model",
    "qlora_available",
    "qlora_quantization_config",
    "QLORA_FULL_PRECISION_MODULES",
    "xformer_lora_config",
    "xformer_stage1_target_regex",
]
