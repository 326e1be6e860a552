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
"""Croc model configuration."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

POOL_MATCHING_METHODS = ("hungarian", "nearest")
ATTENTION_SCOPES = ("visual", "prefix")
RECONSTRUCTION_TARGETS = ("replaced", "all")
FEATURE_SELECT_STRATEGIES = ("default", "full")
IMAGE_ASPECT_RATIOS = ("pad", "square")


@strict
class CrocConfig(PreTrainedConfig):
    r"""
    Configuration of a Croc model: a LLaVA-1.5 model (CLIP vision tower, 2-layer MLP projector, causal LM) whose
    projected image tokens are L2-normalised, plus the modules of the cross-modal comprehension pretraining stage
    (a learnable prompt-token pool and a reconstruction head).

    The defaults describe the released `DeepGlint-AI/LLaVA-v1.5-Croc-7b` (CLIP ViT-L/14 at 336 px, Vicuna-7B v1.5).
    The comprehension-objective defaults follow the paper; each behaviour of the official code is one setting away
    (`pool_matching="nearest"`, `attention_scope="prefix"`, `reconstruction_targets="all"`).

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            The vision tower config (any `AutoModel` vision backbone exposing `hidden_states`). Defaults to CLIP
            ViT-L/14 at 336 px (`openai/clip-vit-large-patch14-336`), the tower of LLaVA-1.5 and Croc.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            The language model config (any decoder built with `AutoModel.from_config`). Defaults to Llama with the
            sizes of Vicuna-7B v1.5 (hidden 4096, 32 layers, 32 heads, FFN 11008, RMSNorm eps 1e-5, 4096 positions,
            vocabulary 32000).
        image_token_id (`int`, *optional*):
            Id of the input-only image placeholder token. Defaults to the text vocabulary size (32000 for Vicuna):
            the official vocabulary has no free id, so the placeholder lives just past it and is replaced by image
            features before any embedding lookup. The embedding table and `lm_head` are never grown for it.
        vision_feature_layer (`int`, *optional*, defaults to -2):
            Index into the vision tower's `hidden_states` whose patch features are projected (-2: the penultimate
            encoder layer, without the final LayerNorm, as `mm_vision_select_layer=-2` in the official code).
        vision_feature_select_strategy (`str`, *optional*, defaults to `"default"`):
            `"default"` drops the CLS token (official `mm_vision_select_feature="patch"`), `"full"` keeps it.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation between the projector's two linear layers (exact erf GELU, official `mlp2x_gelu`).
        multimodal_projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector's linear layers have biases (they do in the official checkpoint).
        normalize_image_features (`bool`, *optional*, defaults to `True`):
            L2-normalise every projected image token before the LM. The official code does this in every stage and
            at inference, so the released weights have only seen unit-norm image tokens.
        image_aspect_ratio (`str`, *optional*, defaults to `"pad"`):
            Preprocessing the checkpoint was trained with: `"pad"` (paste onto a square canvas of the CLIP mean
            colour, stages 1.5 and 2) or `"square"` (plain resize and centre crop, stage 1). Informational for the
            processor.
        comprehension_modules (`bool`, *optional*, defaults to `True`):
            Build the comprehension stage's modules (prompt pool and reconstruction head). Inference never uses them:
            converted release checkpoints set this to `False`, so loading skips their weights (about 3% of Croc-7B)
            although the files keep them; pass `from_pretrained(..., comprehension_modules=True)` to load them for
            further pretraining. Required by `croc_stage`.
        croc_stage (`bool`, *optional*, defaults to `False`):
            Run the cross-modal comprehension objective whenever `labels` and images are given. Can be changed on a
            built model; it takes effect at the next forward.
        prompt_pool_size (`int`, *optional*, defaults to 2048):
            Rows of the learnable prompt-token pool (official value).
        replace_ratio (`float`, *optional*, defaults to 0.75):
            Fraction of each image's tokens replaced by pool rows (paper and official code: 75%, 432 of 576).
        pool_matching (`str`, *optional*, defaults to `"hungarian"`):
            `"hungarian"`: one-to-one assignment of minimum total Euclidean distance (the paper); `"nearest"`: each
            replaced token takes its nearest pool row, many-to-one (the official code).
        attention_scope (`str`, *optional*, defaults to `"visual"`):
            `"visual"`: image tokens attend bidirectionally to all tokens of their image, text stays causal (the
            paper); `"prefix"`: bidirectional over every position before the first supervised label, causal after
            (the official code). Padding keys are always blocked.
        reconstruction_targets (`str`, *optional*, defaults to `"replaced"`):
            Image positions whose original features the head reconstructs: `"replaced"` (the paper) or `"all"`
            (the official code).
        reconstruction_loss_weight (`float`, *optional*, defaults to 10.0):
            Weight of the reconstruction loss in the total loss (official value; the paper's alpha is not given).
        reconstruction_beta (`float`, *optional*, defaults to 0.01):
            SmoothL1 beta of the reconstruction loss (official value).
        reconstruction_head_num_heads (`int`, *optional*):
            Attention heads of the reconstruction head's BERT layer. Defaults to `hidden_size // 64` (official).
        reconstruction_head_intermediate_size (`int`, *optional*):
            FFN width of the reconstruction head. Defaults to `4 * hidden_size` (official).
        reconstruction_head_dropout (`float`, *optional*, defaults to 0.1):
            Hidden and attention dropout of the reconstruction head (BERT default, active in training officially).
        reconstruction_head_layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            LayerNorm epsilon of the reconstruction head (BERT default).
        prompt_pool_init_std (`float`, *optional*, defaults to 1.0):
            Standard deviation of the pool's normal init (official: `torch.randn`, std 1).
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Vicuna's `lm_head` is untied.

    Example:

    ```python
    >>> from modeling_croc import CrocConfig, CrocForConditionalGeneration

    >>> config = CrocConfig()  # Croc-7B sizes
    >>> config.num_image_tokens
    576
    >>> tiny = CrocConfig(
    ...     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    ...                    "num_attention_heads": 2, "image_size": 56, "patch_size": 14},
    ...     text_config={"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    ...                  "num_attention_heads": 4, "vocab_size": 320},
    ...     prompt_pool_size=64,
    ... )
    >>> model = CrocForConditionalGeneration(tiny)
    ```"""

    model_type = "croc"
    attribute_map = {"image_token_index": "image_token_id"}

    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "image_size": 336,
                "patch_size": 14,
                "projection_dim": 768,
                "hidden_act": "quick_gelu",
            },
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="llama",
            init_kwargs={
                "hidden_size": 4096,
                "intermediate_size": 11008,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 32,
                "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-5,
                "vocab_size": 32000,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": 0,
            },
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int | None = None
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    normalize_image_features: bool = True
    image_aspect_ratio: str = "pad"
    comprehension_modules: bool = True
    croc_stage: bool = False
    prompt_pool_size: int = 2048
    replace_ratio: float = 0.75
    pool_matching: str = "hungarian"
    attention_scope: str = "visual"
    reconstruction_targets: str = "replaced"
    reconstruction_loss_weight: float = 10.0
    reconstruction_beta: float = 0.01
    reconstruction_head_num_heads: int | None = None
    reconstruction_head_intermediate_size: int | None = None
    reconstruction_head_dropout: float = 0.1
    reconstruction_head_layer_norm_eps: float = 1e-12
    prompt_pool_init_std: float = 1.0
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.image_token_id is None:
            self.image_token_id = self.text_config.vocab_size
        if self.reconstruction_head_num_heads is None:
            self.reconstruction_head_num_heads = max(1, self.text_config.hidden_size // 64)
        if self.reconstruction_head_intermediate_size is None:
            self.reconstruction_head_intermediate_size = 4 * self.text_config.hidden_size
        self.check_settings()

    def check_settings(self) -> None:
        """Check every choice field and range, raising `ValueError` with the allowed values.

        Runs at construction and again at every forward that uses the comprehension objective, so settings changed
        on a built model (`model.config.pool_matching = ...`) are checked before they are used.
        """
        _check_choice("vision_feature_select_strategy", self.vision_feature_select_strategy, FEATURE_SELECT_STRATEGIES)
        _check_choice("pool_matching", self.pool_matching, POOL_MATCHING_METHODS)
        _check_choice("attention_scope", self.attention_scope, ATTENTION_SCOPES)
        _check_choice("reconstruction_targets", self.reconstruction_targets, RECONSTRUCTION_TARGETS)
        _check_choice("image_aspect_ratio", self.image_aspect_ratio, IMAGE_ASPECT_RATIOS)
        if not 0.0 < self.replace_ratio < 1.0:
            raise ValueError(f"replace_ratio must lie in the open interval (0, 1), got {self.replace_ratio}")
        if self.prompt_pool_size < 1:
            raise ValueError(f"prompt_pool_size must be at least 1, got {self.prompt_pool_size}")
        if self.reconstruction_beta <= 0:
            raise ValueError(f"reconstruction_beta must be positive, got {self.reconstruction_beta}")
        if self.croc_stage and not self.comprehension_modules:
            raise ValueError(
                "croc_stage=True needs the prompt pool and reconstruction head, but comprehension_modules is False. "
                "Load with `from_pretrained(path, comprehension_modules=True)` (the converted release keeps their "
                "weights) or build the config with comprehension_modules=True."
            )
        if self.pool_matching == "hungarian" and self.prompt_pool_size < self.num_replaced_tokens:
            raise ValueError(
                f"pool_matching='hungarian' assigns each replaced token its own pool row, so prompt_pool_size "
                f"({self.prompt_pool_size}) must be >= the number of replaced tokens per image "
                f"({self.num_replaced_tokens} = round({self.replace_ratio} * {self.num_image_tokens})). "
                f"Allowed: a larger pool, a smaller replace_ratio, or pool_matching='nearest'."
            )

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image: (image_size / patch_size)^2, plus the CLS token under strategy `"full"`."""
        patches = (self.vision_config.image_size // self.vision_config.patch_size) ** 2
        return patches + (1 if self.vision_feature_select_strategy == "full" else 0)

    @property
    def num_replaced_tokens(self) -> int:
        """Image tokens per image replaced by prompt-pool rows in the comprehension stage (432 of 576)."""
        return int(round(self.replace_ratio * self.num_image_tokens))


def _check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


__all__ = ["CrocConfig"]
