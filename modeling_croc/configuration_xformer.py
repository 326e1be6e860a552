# Copyright 2026 The modeling_croc Authors. All rights reserved.
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
"""X-Former configuration: frozen CLIP + frozen MAE + Q-Former with a dual cross-attention block."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig, Blip2VisionConfig


# MAE ViT-H/14 with its decoder, as `facebook/vit-mae-huge` (the only public MAE-H release that keeps the decoder).
# Patch 14 on 224 px gives the same 16 x 16 grid as the EVA ViT-g/14 CLIP tower.
VIT_MAE_HUGE_KWARGS = {
    "hidden_size": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "intermediate_size": 5120,
    "image_size": 224,
    "patch_size": 14,
    "decoder_hidden_size": 512,
    "decoder_num_hidden_layers": 8,
    "decoder_num_attention_heads": 16,
    "decoder_intermediate_size": 2048,
    "mask_ratio": 0.5,
    "norm_pix_loss": False,
}

# BLIP-2 Q-Former: bert-base with the `[DEC]` token added (30522 + 1) and a text FFN for ITC / ITM / ITG.
QFORMER_KWARGS = {"vocab_size": 30523, "use_qformer_text_input": True}


@strict
class XFormerConfig(PreTrainedConfig):
    r"""
    Configuration of X-Former (Swetha et al., ECCV 2024, arXiv 2407.13851). There is no official code: every
    choice the paper leaves open is a switch below with the default recommended in `docs/xformer.md`.

    Args:
        vision_config (`dict` or `Blip2VisionConfig`, *optional*):
            Frozen CLIP tower. Defaults to BLIP-2's EVA ViT-g/14 (hidden 1408, 39 of 40 blocks, 224 px, patch 14).
        mae_config (`dict` or `ViTMAEConfig`, *optional*):
            Frozen MAE encoder + decoder. Defaults to ViT-H/14 (`facebook/vit-mae-huge`: hidden 1280, 32 layers,
            decoder 512 x 8). A dict is a full `ViTMAEConfig` (missing keys take `ViTMAEConfig`'s own defaults).
        qformer_config (`dict` or `Blip2QFormerConfig`, *optional*):
            BLIP-2 Q-Former (bert-base, cross-attention every 2nd layer, vocabulary 30523 with `[DEC]`, text FFNs on).
            Its `encoder_hidden_size` always follows `vision_config.hidden_size`.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Frozen decoder-only LLM of stage 2 (`model_type` defaults to `"opt"`). `None` for a stage-1-only config.
        num_query_tokens (`int`, defaults to 32): learned queries; BLIP-2's count (X-Former's is unstated).
        image_text_hidden_size (`int`, defaults to 256): ITC embedding width (BLIP-2).
        mae_mask_ratio (`float`, defaults to 0.5): MAE masking ratio in stage-1 training (paper, via unverified
            summaries; MAE's own default is 0.75). Alias `mae_mask_ratio_train`.
        mae_mask_ratio_eval (`float`, defaults to 0.0): MAE masking at evaluation and in stage 2 (unstated; 0 keeps
            every patch, passed in identity order so MAE tokens stay aligned with the image grid).
        mae_feature_layer (`int`, defaults to -1): MAE layer fed to the dual block; -1 is the encoder output after its
            final LayerNorm, any other index a pre-LayerNorm `hidden_states` entry (inferred).
        reconstruction_loss_weight (`float`, defaults to 1.0): lambda of the reconstruction loss (unstated; BLIP-2
            weights all its losses 1). Alias `reconstruction_weight`. `norm_pix_loss` lives in `mae_config`.
        reconstruction_in_stage2 (`bool`, defaults to `False`): also reconstruct in stage 2 (the paper's ablation:
            it hurts, VQAv2 52.4 vs 55.0).
        dual_num_layers (`int`, defaults to 1): dual cross-attention blocks stacked after the last Q-Former layer.
        dual_mae_num_heads (`int`, defaults to 16): heads of step 1 (MAE tokens attend to queries), at MAE width.
        dual_use_ffn (`bool`, defaults to `True`): a post-LN FFN after each cross-attention step.
        dual_intermediate_size (`int`, defaults to 3072): FFN width of both steps (BERT-base FFN).
        dual_include_mae_cls (`bool`, defaults to `True`): the MAE CLS token takes part in the dual block; if
            `False` it bypasses the block and reaches the decoder unchanged.
        itc_use_fused (`bool`, defaults to `True`): ITC on Z' (what the LLM sees) instead of the plain Q-Former Z_q.
        itm_use_fused (`bool`, defaults to `True`): ITM query outputs go through the dual block with the MAE tokens
            of the paired image.
        itg_use_fused (`bool`, defaults to `False`): ITG as BLIP-2. `True` re-injects Z' as the ITG query prefix.
        itc_label_smoothing, itg_label_smoothing (`float`, defaults to 0.1): BLIP-2's label smoothing.
        itc_temperature_init (`float`, defaults to 0.07): initial learnable ITC temperature (BLIP-2, clamped to
            [0.001, 0.5] in the forward).
        itg_bos_token_id (`int`, defaults to 30522): the `[DEC]` id replacing the first text token for ITG
            (bert-base-uncased vocabulary + 1).
        freeze_qformer_stage2 (`bool`, defaults to `False`): freeze Q-Former, queries and dual block in stage 2
            (the paper trains them).
        image_token_index (`int`, *optional*): LLM placeholder id receiving the projected Z' in stage 2. `None`
            (default) prefixes the visual tokens to the text instead.
        initializer_range (`float`, defaults to 0.02): std of new weights (BERT / BLIP-2).
        initializer_factor (`float`, defaults to 1.0): kept for parity with `Blip2Config`.
        tie_word_embeddings (`bool`, defaults to `True`): tie the ITG head's decoder to the Q-Former word
            embeddings (BERT's MLM head, as LAVIS). The stage-2 LLM follows its own `text_config`.

    Example:

    ```python
    >>> from modeling_croc.configuration_xformer import XFormerConfig
    >>> config = XFormerConfig(text_config={"model_type": "opt"})
    >>> config.qformer_config.encoder_hidden_size
    1408
    ```"""

    model_type = "xformer"
    attribute_map = {
        "image_token_id": "image_token_index",
        "mae_mask_ratio_train": "mae_mask_ratio",
        "reconstruction_weight": "reconstruction_loss_weight",
    }
    sub_configs_defaults = {
        "vision_config": Blip2VisionConfig,
        "mae_config": SubConfigSpec(config_class=AutoConfig, model_type="vit_mae", init_kwargs=VIT_MAE_HUGE_KWARGS),
        "qformer_config": SubConfigSpec(config_class=Blip2QFormerConfig, init_kwargs=QFORMER_KWARGS),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="opt", optional=True),
    }

    vision_config: dict | PreTrainedConfig | None = None
    mae_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    image_text_hidden_size: int = 256
    mae_mask_ratio: float = 0.5
    mae_mask_ratio_eval: float = 0.0
    mae_feature_layer: int = -1
    reconstruction_loss_weight: float = 1.0
    reconstruction_in_stage2: bool = False
    dual_num_layers: int = 1
    dual_mae_num_heads: int = 16
    dual_use_ffn: bool = True
    dual_intermediate_size: int = 3072
    dual_include_mae_cls: bool = True
    itc_use_fused: bool = True
    itm_use_fused: bool = True
    itg_use_fused: bool = False
    itc_label_smoothing: float = 0.1
    itg_label_smoothing: float = 0.1
    itc_temperature_init: float = 0.07
    itg_bos_token_id: int = 30522
    freeze_qformer_stage2: bool = False
    image_token_index: int | None = None
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # The Q-Former cross-attends to the CLIP tokens, so its K/V width is the CLIP width (as Blip2Config).
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        self.use_decoder_only_language_model = True
        self.validate_xformer()

    def validate_xformer(self):
        """Fail early on settings the model cannot build."""
        for name in ("mae_mask_ratio", "mae_mask_ratio_eval"):
            ratio = getattr(self, name)
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {ratio}.")
        if self.mae_config.hidden_size % self.dual_mae_num_heads != 0:
            raise ValueError(
                f"MAE width {self.mae_config.hidden_size} is not divisible by `dual_mae_num_heads`="
                f"{self.dual_mae_num_heads}."
            )
        if self.dual_num_layers < 1:
            raise ValueError("`dual_num_layers` must be >= 1.")
        if not self.qformer_config.use_qformer_text_input:
            raise ValueError("X-Former's ITC/ITM/ITG need `qformer_config.use_qformer_text_input=True`.")

    @property
    def mae_num_patches(self) -> int:
        """Patches per image of the MAE grid (256 for 224 px / patch 14)."""
        image_size, patch_size = self.mae_config.image_size, self.mae_config.patch_size
        image_size = image_size if isinstance(image_size, int) else image_size[0]
        patch_size = patch_size if isinstance(patch_size, int) else patch_size[0]
        return (image_size // patch_size) ** 2


__all__ = ["XFormerConfig"]
