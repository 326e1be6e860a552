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
"""Croc's cross-modal comprehension objective: token replacement, mixed attention mask, reconstruction head and loss."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer

from .matching import match_prompt_pool

IGNORE_INDEX = -100


def sample_replace_mask(
    num_images: int, num_tokens: int, num_replaced: int, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Choose `num_replaced` of each image's `num_tokens` positions uniformly at random: bool `[num_images, num_tokens]`."""
    scores = torch.rand(num_images, num_tokens, generator=generator, device="cpu")  # (N, L)
    chosen = scores.argsort(dim=1)[:, :num_replaced]  # (N, R)
    replace_mask = torch.zeros(num_images, num_tokens, dtype=torch.bool)
    replace_mask.scatter_(1, chosen, True)
    return replace_mask.to(device)


def check_replace_mask(replace_mask: torch.Tensor, num_images: int, num_tokens: int) -> int:
    """Validate a caller's `replace_mask` and return the number of replaced tokens per image."""
    if replace_mask.dtype != torch.bool or tuple(replace_mask.shape) != (num_images, num_tokens):
        raise ValueError(
            f"replace_mask must be a bool tensor of shape [num_images, num_image_tokens] = [{num_images}, "
            f"{num_tokens}], got {replace_mask.dtype} of shape {list(replace_mask.shape)}"
        )
    per_image = replace_mask.sum(dim=1)
    if num_images and not bool((per_image == per_image[0]).all()):
        raise ValueError(f"replace_mask must replace the same number of tokens in every image, got {per_image.tolist()}")
    return int(per_image[0]) if num_images else 0


def replace_with_prompt_pool(
    image_features: torch.Tensor, replace_mask: torch.Tensor, prompt_pool: torch.Tensor, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put matched prompt-pool rows in place of the chosen image tokens.

    image_features `[N, L, H]`, replace_mask `[N, L]` bool with R True per row, prompt_pool `[P, H]`.
    Returns the new features `[N, L, H]` (gradient reaches the gathered pool rows and the kept tokens) and the pool
    row chosen for each replaced token `[N, R]`, in sequence order.
    """
    num_images, _, hidden = image_features.shape
    replaced = image_features[replace_mask].view(num_images, -1, hidden)  # (N, R, H)
    assignment = match_prompt_pool(replaced, prompt_pool, method)  # (N, R)
    pool_rows = prompt_pool[assignment.flatten()].to(image_features.dtype)  # (N*R, H)
    new_features = image_features.masked_scatter(replace_mask.unsqueeze(-1), pool_rows)
    return new_features, assignment


def image_run_ids(image_token_mask: torch.Tensor) -> torch.Tensor:
    """Number each contiguous run of image tokens 1, 2, ... within its row; text positions get 0. `[B, T]` -> `[B, T]`."""
    previous = F.pad(image_token_mask[:, :-1], (1, 0), value=False)
    run_starts = image_token_mask & ~previous
    return run_starts.long().cumsum(dim=1) * image_token_mask


def first_supervised_position(labels: torch.Tensor) -> torch.Tensor:
    """Index of the first label != -100 in each row, or the row length if there is none. `[B, T]` -> `[B]`."""
    seq_len = labels.shape[1]
    positions = torch.arange(seq_len, device=labels.device).expand_as(labels)
    return torch.where(labels != IGNORE_INDEX, positions, seq_len).min(dim=1).values


def comprehension_attention_allowed(
    image_token_mask: torch.Tensor, padding_mask: torch.Tensor | None, labels: torch.Tensor | None, scope: str
) -> torch.Tensor:
    """Which key each query may attend to in the comprehension stage: bool `[B, T, T]`, True = attend.

    - "visual" (paper): causal, plus every image token sees all tokens of its own image.
    - "prefix" (official code): causal, plus every query sees all keys before the first supervised label.
    Padding keys are always blocked (except a query's own position, so no row is empty).
    """
    batch, seq_len = image_token_mask.shape
    device = image_token_mask.device
    query = torch.arange(seq_len, device=device).view(1, seq_len, 1)  # (1, T, 1)
    key = torch.arange(seq_len, device=device).view(1, 1, seq_len)  # (1, 1, T)
    allowed = (key <= query).expand(batch, seq_len, seq_len)  # (B, T, T)
    if scope == "visual":
        run_id = image_run_ids(image_token_mask)  # (B, T)
        same_image = (run_id.unsqueeze(2) == run_id.unsqueeze(1)) & (run_id.unsqueeze(2) > 0)
        allowed = allowed | same_image
    elif scope == "prefix":
        if labels is None:
            raise ValueError("attention_scope='prefix' needs labels to find the first supervised position")
        prefix_end = first_supervised_position(labels).view(batch, 1, 1)  # (B, 1, 1)
        allowed = allowed | (key < prefix_end)
    else:
        raise ValueError(f"attention_scope must be one of ['visual', 'prefix'], got {scope!r}")
    if padding_mask is not None:
        allowed = allowed & padding_mask.bool().unsqueeze(1)
    return allowed | (key == query)


def to_additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool `[B, T, T]` (True = attend) -> additive float `[B, 1, T, T]` (0 or the dtype's minimum), for eager and sdpa."""
    blocked = torch.finfo(dtype).min
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, blocked).unsqueeze(1)


class CrocReconstructionHead(nn.Module):
    """Predicts the original projected image features from the LM's final hidden states at the image positions.

    As the official head: learned absolute positions over the image tokens, one BERT layer (post-LN, GELU, no mask),
    then a linear layer. Input and output `[N, L, H]` with H the text hidden size.
    """

    def __init__(self, config):
        super().__init__()
        hidden = config.text_config.hidden_size
        bert_config = BertConfig(
            hidden_size=hidden,
            num_attention_heads=config.reconstruction_head_num_heads,
            intermediate_size=config.reconstruction_head_intermediate_size,
            hidden_dropout_prob=config.reconstruction_head_dropout,
            attention_probs_dropout_prob=config.reconstruction_head_dropout,
            layer_norm_eps=config.reconstruction_head_layer_norm_eps,
        )
        bert_config._attn_implementation = "sdpa"
        self.position_embeddings = nn.Embedding(config.num_image_tokens, hidden)
        self.layer = BertLayer(bert_config)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, image_hidden_states: torch.Tensor) -> torch.Tensor:
        num_tokens = image_hidden_states.shape[1]
        positions = self.position_embeddings.weight[:num_tokens]  # (L, H)
        hidden_states = image_hidden_states + positions.to(image_hidden_states.dtype)  # (N, L, H)
        hidden_states = self.layer(hidden_states)
        if isinstance(hidden_states, tuple):
            hidden_states = hidden_states[0]
        return self.out_proj(hidden_states)


def reconstruction_loss(
    predictions: torch.Tensor, targets: torch.Tensor, position_mask: torch.Tensor | None, beta: float
) -> torch.Tensor:
    """SmoothL1(beta) in fp32, averaged over every element of the selected positions.

    predictions, targets `[N, L, H]`; position_mask `[N, L]` bool (None = all positions).
    """
    per_element = F.smooth_l1_loss(predictions.float(), targets.float(), beta=beta, reduction="none")  # (N, L, H)
    if position_mask is None:
        return per_element.mean()
    selected = position_mask.unsqueeze(-1).to(per_element.dtype)  # (N, L, 1)
    return (per_element * selected).sum() / (selected.sum() * per_element.shape[-1]).clamp(min=1)


__all__ = [
    "CrocReconstructionHead",
    "comprehension_attention_allowed",
    "reconstruction_loss",
    "replace_with_prompt_pool",
    "sample_replace_mask",
    "to_additive_mask",
]
