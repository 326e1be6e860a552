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
"""PyTorch Croc model: LLaVA-1.5 with L2-normalised image tokens and the cross-modal comprehension objective."""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, ModelOutput
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils.generic import can_return_tuple

from .comprehension import (
    CrocReconstructionHead,
    check_replace_mask,
    comprehension_attention_allowed,
    reconstruction_loss,
    replace_with_prompt_pool,
    sample_replace_mask,
    to_additive_mask,
)
from .configuration_croc import CrocConfig
from .hub_croc import CrocHubMixin


@dataclass
class CrocModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    Outputs of [`CrocModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Final hidden states of the language model (after its final norm).
        image_hidden_states (`torch.FloatTensor` of shape `(num_images, num_image_tokens, hidden_size)`, *optional*):
            Projected (and, by default, L2-normalised) image features, before any prompt-pool replacement.
        image_token_mask (`torch.BoolTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Where the image tokens sit in the sequence (only when images were given).
        replace_mask (`torch.BoolTensor` of shape `(num_images, num_image_tokens)`, *optional*):
            Image tokens replaced by prompt-pool rows (comprehension objective only).
        pool_assignment (`torch.LongTensor` of shape `(num_images, num_replaced)`, *optional*):
            Prompt-pool row placed at each replaced token, in sequence order (comprehension objective only).
    """

    image_hidden_states: torch.FloatTensor | None = None
    image_token_mask: torch.BoolTensor | None = None
    replace_mask: torch.BoolTensor | None = None
    pool_assignment: torch.LongTensor | None = None


@dataclass
class CrocCausalLMOutputWithPast(ModelOutput):
    r"""
    Outputs of [`CrocForConditionalGeneration`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Language-model cross-entropy, plus `reconstruction_loss_weight * reconstruction_loss` when the
            comprehension objective ran.
        lm_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Shifted next-token cross-entropy over the supervised tokens.
        reconstruction_loss (`torch.FloatTensor` of shape `()`, *optional*):
            `reconstruction_loss_weight` x SmoothL1(`reconstruction_beta`) between the reconstruction head's
            predictions and the original image features, i.e. its share of `loss` (comprehension objective only;
            the official code logs the same weighted value as `im_loss`).
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
            Next-token scores over the text vocabulary (the image token is input-only and has no logit).
        past_key_values (`Cache`, *optional*): the language model's KV cache.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): per-layer hidden states of the language model.
        attentions (`tuple(torch.FloatTensor)`, *optional*): per-layer attention weights of the language model.
        image_hidden_states (`torch.FloatTensor` of shape `(num_images, num_image_tokens, hidden_size)`, *optional*):
            Projected image features fed to the language model (before replacement).
        replace_mask (`torch.BoolTensor` of shape `(num_images, num_image_tokens)`, *optional*):
            Image tokens replaced by prompt-pool rows (comprehension objective only).
        pool_assignment (`torch.LongTensor` of shape `(num_images, num_replaced)`, *optional*):
            Prompt-pool row indices placed at the replaced tokens (comprehension objective only).
    """

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None
    replace_mask: torch.BoolTensor | None = None
    pool_assignment: torch.LongTensor | None = None


def find_unreadable_weights_file(folder) -> Path | None:
    """The first safetensors file in a local folder whose header or data cannot be read, or None."""
    folder = Path(str(folder))
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    handle.get_slice(name)
        except (SafetensorError, OSError):
            return path
    return None


class CrocMultiModalProjector(nn.Module):
    """Two-layer MLP from vision width to text width (official `mlp2x_gelu`): `[N, L, Dv]` -> `[N, L, H]`."""

    def __init__(self, config: CrocConfig):
        super().__init__()
        self.linear_1 = nn.Linear(
            config.vision_config.hidden_size, config.text_config.hidden_size, bias=config.multimodal_projector_bias
        )
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(
            config.text_config.hidden_size, config.text_config.hidden_size, bias=config.multimodal_projector_bias
        )

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class CrocPreTrainedModel(CrocHubMixin, PreTrainedModel):
    config: CrocConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    # Checkpoints keep the comprehension modules; a model built without them (`comprehension_modules=False`) skips them.
    _keys_to_ignore_on_load_unexpected = [r"prompt_pool$", r"reconstruction_head\."]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, but a corrupt or truncated weights file is named in the error."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except (SafetensorError, RuntimeError) as error:
            culprit = find_unreadable_weights_file(pretrained_model_name_or_path)
            if culprit is None:
                raise
            raise OSError(
                f"Cannot load {cls.__name__} from {pretrained_model_name_or_path}: the weights file {culprit} is "
                f"corrupt or truncated ({error}). Re-download or re-convert it."
            ) from error

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CrocModel) and module.prompt_pool is not None:
            # The official pool is `torch.randn` (std 1), untouched by the HF initialisation.
            init.normal_(module.prompt_pool, mean=0.0, std=self.config.prompt_pool_init_std)


class CrocModel(CrocPreTrainedModel):
    """Vision tower, projector and language model (no LM head), plus the comprehension stage's prompt pool."""

    def __init__(self, config: CrocConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = CrocMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        # (P, H) learnable prompt tokens that stand in for replaced image tokens in the comprehension stage
        self.prompt_pool = None
        if config.comprehension_modules:
            self.prompt_pool = nn.Parameter(torch.empty(config.prompt_pool_size, config.text_config.hidden_size))
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Raise a `ValueError` naming the problem when `pixel_values` is not `[N, C, S, S]` for this tower."""
        vision = self.config.vision_config
        expected = [vision.num_channels, vision.image_size, vision.image_size]
        if pixel_values.ndim != 4 or list(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape [num_images, {expected[0]}, {expected[1]}, {expected[2]}] for this "
                f"vision tower, got {list(pixel_values.shape)}"
            )

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Image tokens as the LM sees them: tower layer -> (drop CLS) -> projector -> L2 normalise.

        Returns a `BaseModelOutputWithPooling` whose `pooler_output` is a list of `num_images` tensors
        `[num_image_tokens, hidden_size]` (LLaVA's layout, so generation can cache them).
        """
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        self.check_pixel_values(pixel_values)
        tower_dtype = self.vision_tower.dtype
        image_outputs = self.vision_tower(pixel_values.to(tower_dtype), output_hidden_states=True, return_dict=True)
        selected = image_outputs.hidden_states[layer]  # (N, 1 + patches, Dv)
        if strategy == "default":
            selected = selected[:, 1:]  # drop CLS: (N, patches, Dv)
        image_features = self.multi_modal_projector(selected)  # (N, L, H)
        if self.config.normalize_image_features:
            image_features = F.normalize(image_features, p=2, dim=-1)
        image_outputs.pooler_output = list(image_features)
        return image_outputs

    def image_token_mask(self, input_ids: torch.LongTensor, num_images: int) -> torch.BoolTensor:
        """Where the image features go, `[B, T]` bool, after checking the counts against the images."""
        mask = input_ids == self.config.image_token_id  # (B, T)
        per_image = self.config.num_image_tokens
        n_tokens, n_features = int(mask.sum()), num_images * per_image
        if n_tokens != n_features:
            raise ValueError(
                f"Image features and image tokens do not match: the text has {n_tokens} image tokens, the "
                f"{num_images} image(s) give {n_features} features ({per_image} per image). Use the processor to "
                f"expand each <image> into {per_image} tokens, pass one image per <image>, and never truncate "
                f"inside an image."
            )
        run_lengths = mask.sum(dim=1)
        if bool((run_lengths % per_image != 0).any()):
            raise ValueError(
                f"A run of image tokens was cut (e.g. by truncation): image tokens per sample are "
                f"{run_lengths.tolist()}, each must be a multiple of {per_image}."
            )
        return mask

    def embed_text(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Token embeddings with the input-only image id mapped to a valid row (its embedding is overwritten)."""
        safe_ids = input_ids.masked_fill(input_ids == self.config.image_token_id, 0)
        return self.get_input_embeddings()(safe_ids)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        replace_mask: torch.BoolTensor | None = None,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        mm_encoder_outputs: dict | None = None,
        **kwargs,
    ) -> CrocModelOutputWithPast:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Only read by the comprehension objective (`config.croc_stage`), to build the "prefix" attention
                scope; the LM loss is computed by [`CrocForConditionalGeneration`]. The objective runs when
                `config.croc_stage` is on, labels are given and the batch holds images.
            replace_mask (`torch.BoolTensor` of shape `(num_images, num_image_tokens)`, *optional*):
                Image tokens to replace by prompt-pool rows; drawn at random when not given.
            mm_encoder_outputs (`dict`, *optional*):
                Pre-computed `{"image": get_image_features(...)}` (what `generate` passes after encoding once).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs is not None and mm_encoder_outputs.get("image") is not None:
            raise ValueError("You cannot specify both pixel_values and mm_encoder_outputs")
        if inputs_embeds is None:
            inputs_embeds = self.embed_text(input_ids)  # (B, T, H)

        image_outputs = (mm_encoder_outputs or {}).get("image")
        if image_outputs is None and pixel_values is not None:
            image_outputs = self.get_image_features(pixel_values, vision_feature_layer, vision_feature_select_strategy)

        image_features = image_token_mask = pool_assignment = None
        if image_outputs is not None:
            image_features = torch.stack(list(image_outputs.pooler_output)).to(inputs_embeds.dtype)  # (N, L, H)
            if input_ids is None:
                raise ValueError("Images need input_ids holding image tokens to mark where they go")
            image_token_mask = self.image_token_mask(input_ids, image_features.shape[0])
            lm_image_features = image_features
            if self.config.croc_stage and labels is not None:
                lm_image_features, replace_mask, pool_assignment = self.replace_image_tokens(
                    image_features, replace_mask
                )
                attention_mask, position_ids = self.comprehension_mask(
                    image_token_mask, attention_mask, position_ids, labels, inputs_embeds.dtype
                )
            else:
                replace_mask = None
            inputs_embeds = inputs_embeds.masked_scatter(image_token_mask.unsqueeze(-1), lm_image_features)
        elif input_ids is not None and bool((input_ids == self.config.image_token_id).any()):
            raise ValueError(
                f"input_ids hold {int((input_ids == self.config.image_token_id).sum())} image tokens but no "
                f"pixel_values were given (0 image features)"
            )

        self.check_sequence_length(inputs_embeds.shape[1], past_key_values)
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        return CrocModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            image_token_mask=image_token_mask,
            replace_mask=replace_mask if pool_assignment is not None else None,
            pool_assignment=pool_assignment,
        )

    def check_sequence_length(self, num_new: int, past_key_values: Cache | None) -> None:
        """Refuse sequences longer than the language model's positions (a clear error instead of silent drift)."""
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if limit is not None and past + num_new > limit:
            raise ValueError(
                f"The sequence has {past + num_new} positions (image tokens included) but the language model has "
                f"{limit} (text_config.max_position_embeddings). Shorten the text or use fewer images."
            )

    def replace_image_tokens(self, image_features: torch.Tensor, replace_mask: torch.BoolTensor | None):
        """Comprehension stage: swap the chosen image tokens for matched prompt-pool rows."""
        self.config.check_settings()
        num_images, num_tokens, _ = image_features.shape
        if replace_mask is None:
            replace_mask = sample_replace_mask(num_images, num_tokens, self.config.num_replaced_tokens)
        check_replace_mask(replace_mask, num_images, num_tokens)
        replace_mask = replace_mask.to(image_features.device)
        new_features, assignment = replace_with_prompt_pool(
            image_features, replace_mask, self.prompt_pool, self.config.pool_matching
        )
        return new_features, replace_mask, assignment

    def comprehension_mask(self, image_token_mask, attention_mask, position_ids, labels, dtype):
        """Comprehension stage: the mixed 4-D additive mask and matching position ids (padding-aware)."""
        if attention_mask is not None and attention_mask.ndim != 2:
            raise ValueError("The comprehension objective builds its own mask from a 2-D attention_mask")
        implementation = self.language_model.config._attn_implementation or "sdpa"
        if implementation.startswith("flash"):
            raise ValueError(
                f"The comprehension objective's mixed attention mask needs 'sdpa' or 'eager' attention, not "
                f"{implementation!r} (the official stage 1.5 ran on SDPA too): "
                f"model.set_attn_implementation('sdpa')."
            )
        allowed = comprehension_attention_allowed(image_token_mask, attention_mask, labels, self.config.attention_scope)
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        return to_additive_mask(allowed, dtype), position_ids


class CrocForConditionalGeneration(CrocPreTrainedModel, GenerationMixin):
    """Croc with its LM head (generation, LM loss) and the comprehension stage's reconstruction head."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: CrocConfig):
        super().__init__(config)
        self.model = CrocModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.reconstruction_head = CrocReconstructionHead(config) if config.comprehension_modules else None
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        replace_mask: torch.BoolTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        mm_encoder_outputs: dict | None = None,
        **kwargs,
    ) -> CrocCausalLMOutputWithPast:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Targets aligned with `input_ids` (-100 = not supervised); shifted inside the loss.
            replace_mask (`torch.BoolTensor` of shape `(num_images, num_image_tokens)`, *optional*):
                Comprehension stage only: which image tokens to replace (random when not given).

        Example:

        ```python
        >>> from modeling_croc import CrocForConditionalGeneration, CrocProcessor
        >>> model = CrocForConditionalGeneration.from_pretrained("path/to/converted/croc-7b")
        >>> processor = CrocProcessor.from_pretrained("path/to/converted/croc-7b")
        >>> messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
        >>> prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        >>> inputs = processor(images=image, text=prompt, return_tensors="pt")
        >>> output_ids = model.generate(**inputs, max_new_tokens=64)
        ```"""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            replace_mask=replace_mask,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # (B, T, H)
        logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))

        loss = lm_loss = rec_loss = None
        if labels is not None:
            lm_loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
            loss = lm_loss
        if outputs.pool_assignment is not None:
            rec_loss = self.image_reconstruction_loss(
                hidden_states, outputs.image_token_mask, outputs.image_hidden_states, outputs.replace_mask
            )
            loss = rec_loss if loss is None else loss + rec_loss

        return CrocCausalLMOutputWithPast(
            loss=loss,
            lm_loss=lm_loss,
            reconstruction_loss=rec_loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            replace_mask=outputs.replace_mask,
            pool_assignment=outputs.pool_assignment,
        )

    def image_reconstruction_loss(self, hidden_states, image_token_mask, image_features, replace_mask):
        """Weighted SmoothL1 of the head's predictions (from the final hidden states at the image positions) against
        the detached original features."""
        num_images, num_tokens, hidden = image_features.shape
        image_states = hidden_states[image_token_mask].view(num_images, num_tokens, hidden)  # (N, L, H)
        predictions = self.reconstruction_head(image_states)  # (N, L, H)
        targets = image_features.detach().float()
        position_mask = replace_mask if self.config.reconstruction_targets == "replaced" else None
        unweighted = reconstruction_loss(predictions, targets, position_mask, self.config.reconstruction_beta)
        return self.config.reconstruction_loss_weight * unweighted


__all__ = ["CrocForConditionalGeneration", "CrocModel", "CrocPreTrainedModel"]
