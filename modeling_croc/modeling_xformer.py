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
"""X-Former: a BLIP-2 Q-Former fused with frozen MAE features by a dual cross-attention block (stage 1 and 2)."""

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.blip_2.modeling_blip_2 import (
    Blip2QFormerAttention,
    Blip2QFormerIntermediate,
    Blip2QFormerModel,
    Blip2QFormerOutput,
    Blip2TextEmbeddings,
    Blip2VisionModel,
)
from transformers.models.vit_mae.modeling_vit_mae import ViTMAEDecoder, ViTMAEModel
from transformers.utils import ModelOutput

from .configuration_xformer import XFormerConfig
from .hub_croc import CrocHubMixin


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class XFormerMAEOutput(ModelOutput):
    """
    Frozen MAE encoder features.

    Args:
        tokens (`torch.FloatTensor` of shape `(batch_size, 1 + num_visible, mae_hidden)`):
            M: CLS then the visible patch tokens, in the encoder's (shuffled) order.
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`): 1 = patch removed, 0 = kept.
        ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`): un-shuffle indices for the decoder.
    """

    tokens: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None


@dataclass
class XFormerVisualOutput(ModelOutput):
    """
    Visual features shared by both stages.

    Args:
        query_output (`torch.FloatTensor` of shape `(batch_size, num_query_tokens, qformer_hidden)`): Z'.
        qformer_query_output (`torch.FloatTensor` of shape `(batch_size, num_query_tokens, qformer_hidden)`): Z_q.
        fused_mae_tokens (`torch.FloatTensor` of shape `(batch_size, 1 + num_visible, mae_hidden)`): M'.
        clip_tokens (`torch.FloatTensor` of shape `(batch_size, 1 + num_clip_patches, vision_hidden)`): CLIP output.
        mae (`XFormerMAEOutput`): M with its mask and un-shuffle indices.
    """

    query_output: torch.FloatTensor | None = None
    qformer_query_output: torch.FloatTensor | None = None
    fused_mae_tokens: torch.FloatTensor | None = None
    clip_tokens: torch.FloatTensor | None = None
    mae: XFormerMAEOutput | None = None


@dataclass
class XFormerModelOutput(ModelOutput):
    """
    Stage-1 outputs of [`XFormerModel`].

    Args:
        loss (`torch.FloatTensor` of shape `()`): itc + itm + itg + reconstruction_loss_weight * reconstruction.
        itc_loss, itm_loss, itg_loss, reconstruction_loss (`torch.FloatTensor` of shape `()`): the four terms.
        query_output (`torch.FloatTensor` of shape `(batch_size, num_query_tokens, qformer_hidden)`): Z'.
        qformer_query_output (`torch.FloatTensor` of shape `(batch_size, num_query_tokens, qformer_hidden)`): Z_q.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, num_query_tokens, image_text_hidden_size)`):
            L2-normalised per-query image embeddings for retrieval.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, image_text_hidden_size)`):
            L2-normalised text [CLS] embeddings for retrieval.
        logits_per_image (`torch.FloatTensor` of shape `(batch_size, global_batch_size)`):
            max-over-queries cosine similarity / temperature, image rows.
        logits_per_text (`torch.FloatTensor` of shape `(batch_size, global_batch_size)`): the same, text rows.
        itm_logits (`torch.FloatTensor` of shape `(3 * batch_size, 2)`): positives, then image and text negatives.
        itg_logits (`torch.FloatTensor` of shape `(batch_size, text_length, qformer_vocab)`): ITG scores.
        reconstruction_logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_size**2 * 3)`).
        mae_mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`): 1 = patch masked.
        fused_mae_tokens (`torch.FloatTensor` of shape `(batch_size, 1 + num_visible, mae_hidden)`): M'.
    """

    loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    itg_loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    query_output: torch.FloatTensor | None = None
    qformer_query_output: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    itg_logits: torch.FloatTensor | None = None
    reconstruction_logits: torch.FloatTensor | None = None
    mae_mask: torch.FloatTensor | None = None
    fused_mae_tokens: torch.FloatTensor | None = None


@dataclass
class XFormerCausalLMOutput(ModelOutput):
    """
    Stage-2 outputs of [`XFormerForConditionalGeneration`].

    Args:
        loss (`torch.FloatTensor` of shape `()`): LM loss (+ weighted reconstruction if `reconstruction_in_stage2`).
        lm_loss, reconstruction_loss (`torch.FloatTensor` of shape `()`): the terms.
        logits (`torch.FloatTensor` of shape `(batch_size, num_query_tokens + text_length, llm_vocab)`).
        past_key_values (`Cache`): the LLM cache.
        query_output (`torch.FloatTensor` of shape `(batch_size, num_query_tokens, qformer_hidden)`): Z'.
        image_hidden_states (`torch.FloatTensor` of shape `(batch_size, num_query_tokens, llm_hidden)`): projected Z'.
    """

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    query_output: torch.FloatTensor | None = None
    image_hidden_states: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------------


def identity_noise(batch_size: int, num_patches: int, device: torch.device) -> torch.Tensor:
    """Noise that makes ViTMAE keep patches in raster order (ViTMAE argsorts noise even at mask ratio 0)."""
    return torch.arange(num_patches, device=device, dtype=torch.float32).expand(batch_size, -1)


@contextmanager
def mae_mask_ratio(mae_encoder: ViTMAEModel, ratio: float):
    """Temporarily set the masking ratio ViTMAE reads from its (private, copied) config."""
    previous = mae_encoder.config.mask_ratio
    mae_encoder.config.mask_ratio = ratio
    try:
        yield
    finally:
        mae_encoder.config.mask_ratio = previous


def clip_to_mae_pixels(pixel_values: torch.Tensor) -> torch.Tensor:
    """Re-normalise a CLIP-normalised crop with ImageNet statistics (the MAE input of the same crop)."""
    shape = (1, 3, 1, 1)
    clip_mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float32, device=pixel_values.device).view(shape)
    clip_std = torch.tensor(OPENAI_CLIP_STD, dtype=torch.float32, device=pixel_values.device).view(shape)
    mae_mean = torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=torch.float32, device=pixel_values.device).view(shape)
    mae_std = torch.tensor(IMAGENET_DEFAULT_STD, dtype=torch.float32, device=pixel_values.device).view(shape)
    unit_pixels = pixel_values.float() * clip_std + clip_mean
    return ((unit_pixels - mae_mean) / mae_std).to(pixel_values.dtype)


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, num_patches, patch_size**2 * C), MAE's patch layout."""
    batch_size, channels, height, width = pixel_values.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = pixel_values.reshape(batch_size, channels, grid_h, patch_size, grid_w, patch_size)
    patches = patches.permute(0, 2, 4, 3, 5, 1)  # B, gh, gw, p, p, C
    return patches.reshape(batch_size, grid_h * grid_w, patch_size**2 * channels)


def masked_patch_mse(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool):
    """MAE loss: mean over masked patches of the per-patch MSE (over all patches if none is masked)."""
    predicted, target, mask = predicted.float(), target.float(), mask.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((predicted - target) ** 2).mean(dim=-1)  # B, L
    if mask.sum() == 0:
        mask = torch.ones_like(mask)
    return (per_patch * mask).sum() / mask.sum()


def gather_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` over data-parallel ranks on dim 0; the local slice keeps its autograd graph."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    gathered[dist.get_rank()] = tensor
    return torch.cat(gathered, dim=0)


def process_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def itg_attention_mask(text_attention_mask: torch.Tensor, num_queries: int, dtype: torch.dtype) -> torch.Tensor:
    """
    BLIP-2's multimodal causal mask as an additive 4-D mask `(B, 1, Q + T, Q + T)`: query rows see the queries
    only; text rows see every query plus earlier, non-padded text.
    """
    batch_size, text_length = text_attention_mask.shape
    device = text_attention_mask.device
    text_keys = text_attention_mask.bool()[:, None, :]  # B, 1, T
    causal = torch.ones(text_length, text_length, dtype=torch.bool, device=device).tril()
    text_rows = torch.cat(
        [
            torch.ones(batch_size, text_length, num_queries, dtype=torch.bool, device=device),
            causal[None] & text_keys,
        ],
        dim=-1,
    )  # B, T, Q + T
    query_rows = torch.cat(
        [
            torch.ones(batch_size, num_queries, num_queries, dtype=torch.bool, device=device),
            torch.zeros(batch_size, num_queries, text_length, dtype=torch.bool, device=device),
        ],
        dim=-1,
    )  # B, Q, Q + T
    allowed = torch.cat([query_rows, text_rows], dim=1)  # B, Q + T, Q + T
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def sample_hard_negatives(similarity: torch.Tensor, positive_index: torch.Tensor) -> torch.Tensor:
    """One index per row, drawn with probability softmax(similarity) + 1e-4, the positive excluded. (B, N) -> (B,)"""
    with torch.no_grad():
        weights = F.softmax(similarity.float(), dim=1) + 1e-4
        weights.scatter_(1, positive_index[:, None], 0.0)
        return torch.multinomial(weights, 1).squeeze(1)


# ----------------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------------


class XFormerCrossAttentionStep(nn.Module):
    """One BERT-style post-LN step: cross-attention (+ residual, LayerNorm), then an optional post-LN FFN."""

    def __init__(self, step_config, use_ffn: bool):
        super().__init__()
        self.crossattention = Blip2QFormerAttention(step_config, is_cross_attention=True)
        self.use_ffn = use_ffn
        if use_ffn:
            self.intermediate = Blip2QFormerIntermediate(step_config)
            self.output = Blip2QFormerOutput(step_config)

    def forward(self, hidden_states: torch.Tensor, context_states: torch.Tensor) -> torch.Tensor:
        # hidden_states: B, N, width (attention queries); context_states: B, K, context width (keys/values)
        hidden_states = self.crossattention(hidden_states, encoder_hidden_states=context_states)
        if self.use_ffn:
            hidden_states = self.output(self.intermediate(hidden_states), hidden_states)
        return hidden_states


class XFormerDualCrossAttentionLayer(nn.Module):
    """Step 1: MAE tokens attend to the queries (M -> M'). Step 2: the queries attend to M' (Z_q -> Z')."""

    def __init__(self, mae_step_config, query_step_config, use_ffn: bool):
        super().__init__()
        self.mae_from_queries = XFormerCrossAttentionStep(mae_step_config, use_ffn)
        self.queries_from_mae = XFormerCrossAttentionStep(query_step_config, use_ffn)

    def forward(self, query_states: torch.Tensor, mae_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mae_states = self.mae_from_queries(mae_states, query_states)  # B, M, mae_hidden
        query_states = self.queries_from_mae(query_states, mae_states)  # B, Q, qformer_hidden
        return query_states, mae_states


class XFormerDualCrossAttention(nn.Module):
    """`dual_num_layers` dual cross-attention layers on top of the last Q-Former layer."""

    def __init__(self, config: XFormerConfig, qformer_config):
        super().__init__()
        mae_width = config.mae_config.hidden_size
        mae_step_config = copy.deepcopy(qformer_config)
        mae_step_config.hidden_size = mae_width
        mae_step_config.num_attention_heads = config.dual_mae_num_heads
        mae_step_config.encoder_hidden_size = qformer_config.hidden_size
        mae_step_config.intermediate_size = config.dual_intermediate_size
        query_step_config = copy.deepcopy(qformer_config)
        query_step_config.encoder_hidden_size = mae_width
        query_step_config.intermediate_size = config.dual_intermediate_size
        self.layers = nn.ModuleList(
            XFormerDualCrossAttentionLayer(mae_step_config, query_step_config, config.dual_use_ffn)
            for _ in range(config.dual_num_layers)
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].queries_from_mae.crossattention.output.dense.weight.dtype

    def forward(self, query_states: torch.Tensor, mae_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            query_states, mae_states = layer(query_states, mae_states)
        return query_states, mae_states


class XFormerLMHead(nn.Module):
    """BERT's MLM head for ITG: dense -> GELU -> LayerNorm -> decoder tied to the word embeddings, plus a bias."""

    def __init__(self, qformer_config):
        super().__init__()
        hidden = qformer_config.hidden_size
        self.dense = nn.Linear(hidden, hidden)
        self.activation = ACT2FN[qformer_config.hidden_act]
        self.LayerNorm = nn.LayerNorm(hidden, eps=qformer_config.layer_norm_eps)
        self.decoder = nn.Linear(hidden, qformer_config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(qformer_config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.LayerNorm(self.activation(self.dense(hidden_states)))
        return self.decoder(hidden_states) + self.bias


# ----------------------------------------------------------------------------------------------------------------------
# Pre-trained model base: the visual path shared by both stages
# ----------------------------------------------------------------------------------------------------------------------


class XFormerPreTrainedModel(CrocHubMixin, PreTrainedModel):
    config: XFormerConfig
    base_model_prefix = "xformer"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False  # the fp32 Q-Former blocks reliable flash-attention dispatch (as BLIP-2)
    _supports_attention_backend = True
    _keep_in_fp32_modules = ["query_tokens", "qformer", "dual_cross_attention"]
    _no_split_modules = [
        "Blip2EncoderLayer",
        "Blip2QFormerLayer",
        "ViTMAELayer",
        "XFormerDualCrossAttentionLayer",
        "Blip2TextEmbeddings",
    ]
    _skip_keys_device_placement = ["past_key_values"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, XFormerPreTrainedModel) and hasattr(module, "query_tokens"):
            init.normal_(module.query_tokens, mean=0.0, std=std)
        if isinstance(module, XFormerModel):
            init.constant_(module.temp, self.config.itc_temperature_init)
        elif isinstance(module, XFormerLMHead):
            init.zeros_(module.bias)
        elif isinstance(module, ViTMAEDecoder):
            module.initialize_weights(self.config.mae_num_patches)  # fixed sin-cos positions, N(0, .02) mask token
        elif isinstance(module, Blip2TextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))

    # -- freezing ------------------------------------------------------------------------------------------------------

    def frozen_modules(self) -> list[nn.Module]:
        """The frozen parts: both encoders and the MAE decoder (frozen, yet never run under no_grad)."""
        return [getattr(self, name) for name in ("vision_model", "mae_encoder", "mae_decoder") if hasattr(self, name)]

    def freeze(self):
        """`requires_grad=False` on the frozen parts (called at construction and again after loading weights)."""
        for module in self.frozen_modules():
            module.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading re-creates parameters with `requires_grad=True`; re-apply the freeze.
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.freeze()
        return loaded

    # -- construction helpers ------------------------------------------------------------------------------------------

    def _build_visual_path(self, config: XFormerConfig, with_text_ffn: bool = True):
        """CLIP tower, MAE encoder, queries, Q-Former and dual block (the children both stages share)."""
        self.vision_model = Blip2VisionModel._from_config(config.vision_config)
        # The MAE encoder gets a private config copy: its masking ratio is switched per call (train / eval).
        self.mae_encoder = ViTMAEModel._from_config(copy.deepcopy(config.mae_config))
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        qformer_config = config.qformer_config
        if not with_text_ffn:  # stage 2 never feeds text to the Q-Former: no text FFNs (BLIP-2's stage-2 layout)
            qformer_config = copy.deepcopy(qformer_config)
            qformer_config.use_qformer_text_input = False
        self.qformer = Blip2QFormerModel._from_config(qformer_config)
        self.dual_cross_attention = XFormerDualCrossAttention(config, self.qformer.config)

    def _build_mae_decoder(self, config: XFormerConfig):
        self.mae_decoder = ViTMAEDecoder(config.mae_config, num_patches=config.mae_num_patches)
        # ViTMAEDecoder keeps a private config copy that no attention dispatch reaches: follow the encoder's.
        self.mae_decoder.config._attn_implementation = self.mae_encoder.config._attn_implementation

    # -- frozen encoders -----------------------------------------------------------------------------------------------

    def encode_clip(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP tokens, (B, 3, H, W) -> (B, 1 + patches, vision_hidden)."""
        with torch.no_grad():
            return self.vision_model(pixel_values=pixel_values).last_hidden_state

    def mae_ratio(self) -> float:
        """Stage-1 training masks `mae_mask_ratio`; evaluation (and stage 2) uses `mae_mask_ratio_eval`."""
        if self.training and self.uses_reconstruction():
            return self.config.mae_mask_ratio
        return self.config.mae_mask_ratio_eval

    def uses_reconstruction(self) -> bool:
        return hasattr(self, "mae_decoder")

    def encode_mae(self, mae_pixel_values: torch.Tensor, noise: torch.Tensor | None = None) -> XFormerMAEOutput:
        """Frozen MAE tokens M (B, 1 + visible, mae_hidden) with the mask and un-shuffle indices of the masking."""
        ratio = self.mae_ratio()
        if noise is None and ratio == 0.0:
            noise = identity_noise(mae_pixel_values.shape[0], self.config.mae_num_patches, mae_pixel_values.device)
        layer = self.config.mae_feature_layer
        with torch.no_grad(), mae_mask_ratio(self.mae_encoder, ratio):
            outputs = self.mae_encoder(
                pixel_values=mae_pixel_values, noise=noise, output_hidden_states=layer != -1
            )
        tokens = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]
        return XFormerMAEOutput(tokens=tokens, mask=outputs.mask, ids_restore=outputs.ids_restore)

    # -- trainable visual path -----------------------------------------------------------------------------------------

    def query_transformer(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        """Z_q: the learned queries cross-attending to CLIP, (B, N_clip, Dv) -> (B, Q, D)."""
        query_tokens = self.query_tokens.expand(clip_tokens.shape[0], -1, -1)
        return self.qformer(query_embeds=query_tokens, encoder_hidden_states=clip_tokens).last_hidden_state

    def fuse(self, query_states: torch.Tensor, mae_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dual cross-attention: (Z_q, M) -> (Z', M'). M' keeps M's length and order (CLS first)."""
        dual_dtype = self.dual_cross_attention.dtype  # fp32 even when the frozen encoders run in half precision
        query_states, mae_tokens = query_states.to(dual_dtype), mae_tokens.to(dual_dtype)
        if self.config.dual_include_mae_cls:
            return self.dual_cross_attention(query_states, mae_tokens)
        fused_queries, fused_patches = self.dual_cross_attention(query_states, mae_tokens[:, 1:])
        return fused_queries, torch.cat([mae_tokens[:, :1], fused_patches], dim=1)

    def get_visual_features(
        self,
        pixel_values: torch.Tensor,
        mae_pixel_values: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> XFormerVisualOutput:
        """Both encoders, the Q-Former and the dual block: everything up to Z' and M'."""
        if mae_pixel_values is None:
            mae_pixel_values = clip_to_mae_pixels(pixel_values)
        clip_tokens = self.encode_clip(pixel_values)
        mae = self.encode_mae(mae_pixel_values, noise)
        qformer_query_output = self.query_transformer(clip_tokens)
        query_output, fused_mae_tokens = self.fuse(qformer_query_output, mae.tokens)
        return XFormerVisualOutput(
            query_output=query_output,
            qformer_query_output=qformer_query_output,
            fused_mae_tokens=fused_mae_tokens,
            clip_tokens=clip_tokens,
            mae=mae,
        )

    # -- reconstruction ------------------------------------------------------------------------------------------------

    def reconstruct(self, mae_states: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Frozen MAE decoder on M' (B, 1 + visible, mae_hidden) -> pixels (B, num_patches, patch**2 * 3)."""
        decoder_dtype = self.mae_decoder.decoder_embed.weight.dtype
        return self.mae_decoder(mae_states.to(decoder_dtype), ids_restore).logits

    def reconstruction_loss(
        self, predicted: torch.Tensor, mae_pixel_values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """MAE's pixel loss on the masked patches of the ImageNet-normalised image, in fp32."""
        target = patchify(mae_pixel_values, self.config.mae_config.patch_size)
        return masked_patch_mse(predicted, target, mask, self.config.mae_config.norm_pix_loss)


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1
# ----------------------------------------------------------------------------------------------------------------------


class XFormerModel(XFormerPreTrainedModel):
    """
    X-Former stage 1: BLIP-2's ITC / ITM / ITG on the Q-Former plus MAE reconstruction of the fused MAE tokens M'
    through the frozen MAE decoder. Frozen: `vision_model`, `mae_encoder`, `mae_decoder`.
    """

    # Regexes searched in parameter names: anchored so that `vision_model.embeddings` stays half precision.
    _keep_in_fp32_modules = [
        "query_tokens",
        "qformer",
        "dual_cross_attention",
        r"^embeddings\.",
        r"^vision_projection\.",
        r"^text_projection\.",
        r"^itm_head\.",
        r"^lm_head\.",
        r"^temp$",
    ]
    _tied_weights_keys = {"lm_head.decoder.weight": "embeddings.word_embeddings.weight"}
    # The stage-1 losses are per-batch means: Trainer must scale them for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, config: XFormerConfig):
        super().__init__(config)
        self._build_visual_path(config)
        self._build_mae_decoder(config)
        qformer_config = config.qformer_config
        self.embeddings = Blip2TextEmbeddings(qformer_config)
        self.vision_projection = nn.Linear(qformer_config.hidden_size, config.image_text_hidden_size)
        self.text_projection = nn.Linear(qformer_config.hidden_size, config.image_text_hidden_size)
        self.itm_head = nn.Linear(qformer_config.hidden_size, 2)
        self.lm_head = XFormerLMHead(qformer_config)
        self.temp = nn.Parameter(torch.tensor(config.itc_temperature_init))
        self.freeze()
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    # -- text and retrieval features -----------------------------------------------------------------------------------

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text-only Q-Former pass (unimodal mask) -> [CLS] state, (B, T) -> (B, D)."""
        text_states = self.qformer(
            query_embeds=self.embeddings(input_ids=input_ids), query_length=0, attention_mask=attention_mask
        ).last_hidden_state
        return text_states[:, 0]

    def image_embeddings(self, visual: XFormerVisualOutput) -> torch.Tensor:
        """L2-normalised per-query ITC embeddings (B, Q, E), from Z' or Z_q (`itc_use_fused`)."""
        queries = visual.query_output if self.config.itc_use_fused else visual.qformer_query_output
        return F.normalize(self.vision_projection(queries.to(self.vision_projection.weight.dtype)), dim=-1)

    def text_embeddings(self, text_cls: torch.Tensor) -> torch.Tensor:
        """L2-normalised ITC text embedding (B, E)."""
        return F.normalize(self.text_projection(text_cls.to(self.text_projection.weight.dtype)), dim=-1)

    def get_image_features(
        self, pixel_values: torch.Tensor, mae_pixel_values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Retrieval image embeddings (B, Q, E); evaluation masking (identity order)."""
        return self.image_embeddings(self.get_visual_features(pixel_values, mae_pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Retrieval text embeddings (B, E)."""
        return self.text_embeddings(self.encode_text(input_ids, attention_mask))

    # -- ITM -----------------------------------------------------------------------------------------------------------

    def itm_logits(
        self,
        clip_tokens: torch.Tensor,
        mae_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Joint [queries; text] pass (bidirectional), optional dual block, `itm_head` mean over queries -> (B, 2)."""
        batch_size, num_queries = input_ids.shape[0], self.config.num_query_tokens
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        query_tokens = self.query_tokens.expand(batch_size, -1, -1)
        joint_embeds = self.embeddings(input_ids=input_ids, query_embeds=query_tokens)  # B, Q + T, D
        query_mask = torch.ones(batch_size, num_queries, dtype=attention_mask.dtype, device=attention_mask.device)
        joint_states = self.qformer(
            query_embeds=joint_embeds,
            query_length=num_queries,
            attention_mask=torch.cat([query_mask, attention_mask], dim=1),
            encoder_hidden_states=clip_tokens,
        ).last_hidden_state
        query_states = joint_states[:, :num_queries]  # B, Q, D
        if self.config.itm_use_fused:
            query_states, _ = self.fuse(query_states, mae_tokens)
        return self.itm_head(query_states.to(self.itm_head.weight.dtype)).mean(dim=1)

    def compute_itm_scores(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mae_pixel_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Probability that image i matches text i, (B,). For retrieval re-ranking."""
        if mae_pixel_values is None:
            mae_pixel_values = clip_to_mae_pixels(pixel_values)
        clip_tokens = self.encode_clip(pixel_values)
        mae_tokens = self.encode_mae(mae_pixel_values).tokens
        return self.itm_logits(clip_tokens, mae_tokens, input_ids, attention_mask).softmax(dim=-1)[:, 1]

    # -- losses --------------------------------------------------------------------------------------------------------

    def contrastive_logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor):
        """Local rows against all gathered columns: (B, Q, E), (B, E) -> i2t, t2i, each (B, B_global)."""
        temperature = self.temp.clamp(0.001, 0.5)
        all_image_embeds = gather_across_processes(image_embeds)  # B_global, Q, E
        all_text_embeds = gather_across_processes(text_embeds)  # B_global, E
        logits_i2t = torch.einsum("bqe,ne->bnq", image_embeds, all_text_embeds).amax(dim=-1) / temperature
        logits_t2i = torch.einsum("be,nqe->bnq", text_embeds, all_image_embeds).amax(dim=-1) / temperature
        return logits_i2t, logits_t2i

    def itc_loss(self, logits_i2t: torch.Tensor, logits_t2i: torch.Tensor) -> torch.Tensor:
        targets = process_rank() * logits_i2t.shape[0] + torch.arange(logits_i2t.shape[0], device=logits_i2t.device)
        smoothing = self.config.itc_label_smoothing
        return (
            F.cross_entropy(logits_i2t.float(), targets, label_smoothing=smoothing)
            + F.cross_entropy(logits_t2i.float(), targets, label_smoothing=smoothing)
        ) / 2

    def itm_loss(self, visual, input_ids, attention_mask, logits_i2t, logits_t2i):
        """BLIP-2 ITM: B positives, B texts with a hard-negative image, B images with a hard-negative text."""
        batch_size = input_ids.shape[0]
        all_clip = gather_across_processes(visual.clip_tokens)
        all_mae = gather_across_processes(visual.mae.tokens)
        all_ids = gather_across_processes(input_ids)
        all_mask = gather_across_processes(attention_mask)
        positives = process_rank() * batch_size + torch.arange(batch_size, device=input_ids.device)
        negative_images = sample_hard_negatives(logits_t2i, positives)  # for each text
        negative_texts = sample_hard_negatives(logits_i2t, positives)  # for each image
        clip_tokens = torch.cat([visual.clip_tokens, all_clip[negative_images], visual.clip_tokens])
        mae_tokens = torch.cat([visual.mae.tokens, all_mae[negative_images], visual.mae.tokens])
        texts = torch.cat([input_ids, input_ids, all_ids[negative_texts]])
        masks = torch.cat([attention_mask, attention_mask, all_mask[negative_texts]])
        logits = self.itm_logits(clip_tokens, mae_tokens, texts, masks)  # 3B, 2
        labels = torch.cat(
            [torch.ones(batch_size, dtype=torch.long), torch.zeros(2 * batch_size, dtype=torch.long)]
        ).to(logits.device)
        return F.cross_entropy(logits.float(), labels), logits

    def itg_loss(self, visual, input_ids, attention_mask):
        """BLIP-2 ITG: `[DEC]` + text, multimodal causal mask, next-token CE with label smoothing."""
        num_queries = self.config.num_query_tokens
        decoder_ids = input_ids.clone()
        decoder_ids[:, 0] = self.config.itg_bos_token_id
        labels = decoder_ids.masked_fill(attention_mask == 0, -100)
        if self.config.itg_use_fused:
            prefix = visual.query_output  # Z' re-injected as the query prefix, no cross-attention to CLIP needed
        else:
            prefix = self.query_tokens.expand(input_ids.shape[0], -1, -1)
        joint_embeds = self.embeddings(input_ids=decoder_ids, query_embeds=prefix)  # B, Q + T, D
        qformer_dtype = self.qformer.layernorm.weight.dtype
        joint_states = self.qformer(
            query_embeds=joint_embeds,
            query_length=num_queries,
            attention_mask=itg_attention_mask(attention_mask, num_queries, qformer_dtype),
            encoder_hidden_states=visual.clip_tokens,
        ).last_hidden_state
        logits = self.lm_head(joint_states[:, num_queries:])  # B, T, V
        shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
        loss = F.cross_entropy(
            shifted_logits.reshape(-1, logits.shape[-1]).float(),
            shifted_labels.reshape(-1),
            ignore_index=-100,
            label_smoothing=self.config.itg_label_smoothing,
        )
        return loss, logits

    # -- forward -------------------------------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mae_pixel_values: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        return_loss: bool = True,
        return_dict: bool | None = None,
        **kwargs,
    ) -> XFormerModelOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, H, W)`): CLIP-normalised crop.
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): BERT ids ([CLS] first).
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): text padding mask.
            mae_pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, H, W)`, *optional*): the same crop with
                ImageNet normalisation; derived from `pixel_values` when omitted.
            noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*): MAE masking noise.
            return_loss (`bool`, defaults to `True`): compute the losses (text losses need `input_ids`).

        Example:

        ```python
        >>> out = model(pixel_values=px, mae_pixel_values=mae_px, input_ids=ids, attention_mask=mask)
        >>> out.loss, out.query_output.shape  # Z': (batch, 32, 768)
        ```"""
        if mae_pixel_values is None:
            mae_pixel_values = clip_to_mae_pixels(pixel_values)
        visual = self.get_visual_features(pixel_values, mae_pixel_values, noise)
        image_embeds = self.image_embeddings(visual)
        output = XFormerModelOutput(
            query_output=visual.query_output,
            qformer_query_output=visual.qformer_query_output,
            image_embeds=image_embeds,
            mae_mask=visual.mae.mask,
            fused_mae_tokens=visual.fused_mae_tokens,
        )
        losses = []
        if return_loss:
            output.reconstruction_logits = self.reconstruct(visual.fused_mae_tokens, visual.mae.ids_restore)
            output.reconstruction_loss = self.reconstruction_loss(
                output.reconstruction_logits, mae_pixel_values, visual.mae.mask
            )
            losses.append(self.config.reconstruction_loss_weight * output.reconstruction_loss)
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            output.text_embeds = self.text_embeddings(self.encode_text(input_ids, attention_mask))
            output.logits_per_image, output.logits_per_text = self.contrastive_logits(image_embeds, output.text_embeds)
            if return_loss:
                output.itc_loss = self.itc_loss(output.logits_per_image, output.logits_per_text)
                output.itg_loss, output.itg_logits = self.itg_loss(visual, input_ids, attention_mask)
                losses += [output.itc_loss, output.itg_loss]
                if output.logits_per_image.shape[1] > 1:  # hard negatives need a second pair
                    output.itm_loss, output.itm_logits = self.itm_loss(
                        visual, input_ids, attention_mask, output.logits_per_image, output.logits_per_text
                    )
                    losses.append(output.itm_loss)
        if losses:
            output.loss = torch.stack(losses).sum()
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------------------------------------------------
# Stage 2
# ----------------------------------------------------------------------------------------------------------------------


class XFormerForConditionalGeneration(XFormerPreTrainedModel, GenerationMixin):
    """
    X-Former stage 2: Z' -> `language_projection` (one Linear) -> frozen `language_model`; the projected queries are
    prefixed to the text (or fill `image_token_index` placeholders). LM loss only, unless `reconstruction_in_stage2`.
    """

    _keys_to_ignore_on_load_unexpected = [
        r"^embeddings\.",
        r"^vision_projection\.",
        r"^text_projection\.",
        r"^itm_head\.",
        r"^lm_head\.",
        r"^temp$",
        r"^mae_decoder\.",
        r"^qformer\.encoder\.layer\.\d+\.(intermediate|output)\.",  # stage-1 text FFNs
    ]

    def __init__(self, config: XFormerConfig):
        super().__init__(config)
        if config.text_config is None:
            raise ValueError("XFormerForConditionalGeneration needs `config.text_config` (the frozen LLM).")
        self._build_visual_path(config, with_text_ffn=False)
        if config.reconstruction_in_stage2:
            self._build_mae_decoder(config)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.freeze()
        self.post_init()

    def frozen_modules(self) -> list[nn.Module]:
        """Stage 2 also freezes the LLM, and with `freeze_qformer_stage2` the Q-Former, queries and dual block."""
        frozen = super().frozen_modules() + [self.language_model]
        if self.config.freeze_qformer_stage2:
            frozen += [self.qformer, self.dual_cross_attention]
        return frozen

    def freeze(self):
        super().freeze()
        if self.config.freeze_qformer_stage2:
            self.query_tokens.requires_grad_(False)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        self.language_model.set_output_embeddings(new_embeddings)

    def get_decoder(self):
        return self.language_model.get_decoder()

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        mae_pixel_values: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, XFormerVisualOutput]:
        """Projected Z' for the LLM (B, Q, llm_hidden), and the visual features it came from."""
        visual = self.get_visual_features(pixel_values, mae_pixel_values, noise)
        projected = self.language_projection(visual.query_output.to(self.language_projection.weight.dtype))
        return projected, visual

    def merge_visual_and_text(
        self,
        visual_tokens: torch.Tensor,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill `image_token_index` placeholders if the ids carry them, else prefix the Q visual tokens."""
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        visual_tokens = visual_tokens.to(inputs_embeds.device, inputs_embeds.dtype)
        image_token = self.config.image_token_index
        if image_token is not None and input_ids is not None and (input_ids == image_token).any():
            placeholder = (input_ids == image_token).unsqueeze(-1)
            if placeholder.sum() != visual_tokens.shape[0] * visual_tokens.shape[1]:
                raise ValueError(
                    f"Image placeholders and visual tokens do not match: {int(placeholder.sum())} placeholders, "
                    f"{visual_tokens.shape[0] * visual_tokens.shape[1]} visual tokens."
                )
            return inputs_embeds.masked_scatter(placeholder, visual_tokens), attention_mask
        visual_mask = torch.ones(visual_tokens.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        return torch.cat([visual_tokens, inputs_embeds], dim=1), torch.cat([visual_mask, attention_mask], dim=1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mae_pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> XFormerCausalLMOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, H, W)`): CLIP-normalised crop.
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): LLM ids (right padding to train).
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): text mask.
            mae_pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, H, W)`, *optional*): ImageNet-normalised
                crop; derived from `pixel_values` when omitted.
            labels (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): LM targets, -100 ignored;
                aligned with the trailing logits (the visual prefix is never a target).
            kwargs: passed to the LLM; Trainer's `num_items_in_batch` goes to the LM loss only (the optional
                stage-2 reconstruction term stays a per-batch mean).
        """
        if mae_pixel_values is None:
            mae_pixel_values = clip_to_mae_pixels(pixel_values)
        visual_tokens, visual = self.get_image_features(pixel_values, mae_pixel_values, noise)
        inputs_embeds, attention_mask = self.merge_visual_and_text(
            visual_tokens, input_ids, inputs_embeds, attention_mask
        )
        lm_kwargs = {k: v for k, v in kwargs.items() if k != "num_items_in_batch"}
        outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **lm_kwargs)
        logits = outputs.logits
        output = XFormerCausalLMOutput(
            logits=logits,
            past_key_values=getattr(outputs, "past_key_values", None),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
            query_output=visual.query_output,
            image_hidden_states=visual_tokens,
        )
        if labels is not None:
            text_logits = logits[:, -labels.shape[1] :].contiguous()
            output.lm_loss = self.loss_function(
                logits=text_logits, labels=labels.to(logits.device), vocab_size=self.config.text_config.vocab_size,
                **kwargs,
            )
            output.loss = output.lm_loss
        if self.uses_reconstruction() and self.training:
            predicted = self.reconstruct(visual.fused_mae_tokens, visual.mae.ids_restore)
            output.reconstruction_loss = self.reconstruction_loss(predicted, mae_pixel_values, visual.mae.mask)
            weighted = self.config.reconstruction_loss_weight * output.reconstruction_loss
            output.loss = weighted if output.loss is None else output.loss + weighted
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mae_pixel_values: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """
        Caption / answer with the frozen LLM: visual prefix + prompt (default: the LLM's BOS) -> `language_model.
        generate` (greedy, beam, sampling, with or without cache). Returns the prompt ids followed by the new ids.
        Batched prompts must be left-padded.
        """
        visual_tokens, _ = self.get_image_features(pixel_values, mae_pixel_values)
        batch_size = pixel_values.shape[0]
        if input_ids is None:
            bos = self.config.text_config.bos_token_id
            input_ids = torch.full((batch_size, 1), bos, dtype=torch.long, device=pixel_values.device)
        inputs_embeds, attention_mask = self.merge_visual_and_text(visual_tokens, input_ids, None, attention_mask)
        new_tokens = self.language_model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generate_kwargs
        )
        return torch.cat([input_ids.repeat_interleave(new_tokens.shape[0] // batch_size, dim=0), new_tokens], dim=1)


__all__ = [
    "XFormerPreTrainedModel",
    "XFormerModel",
    "XFormerForConditionalGeneration",
    "XFormerDualCrossAttention",
    "XFormerModelOutput",
    "XFormerCausalLMOutput",
]
