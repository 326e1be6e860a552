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
"""LLaVA-format conversation dataset and the Croc training collator (official v1 and plain loss masks)."""

import json
import os
import warnings

import PIL.Image
import torch
from torch.utils.data import Dataset
from transformers.utils.chat_template_utils import render_jinja_template

from .processing_croc import tokenize_around_images


IGNORE_INDEX = -100
ROLE_OF_SPEAKER = {"human": "user", "gpt": "assistant", "system": "system"}
CONVERSATION_FORMATS = ("v1", "plain")


def is_llava_sample(sample) -> bool:
    return isinstance(sample, dict) and isinstance(sample.get("conversations"), list)


class LlavaConversationDataset(Dataset):
    """
    A LLaVA-format JSON list: `{"id", "image": path relative to image_folder, "conversations": [{"from": "human" |
    "gpt", "value": "<image>\\n..."}, ...]}`. Samples without `"image"` are text-only.

    Args:
        data (`str`, `os.PathLike` or `list[dict]`):
            Path of the JSON file, or the already loaded list.
        image_folder (`str` or `os.PathLike`, *optional*):
            Folder the `"image"` paths are relative to; required if any sample has an image.

    Each item is `{"id", "conversations", "image"}` with `"image"` an opened `PIL.Image.Image` (mode untouched) or
    `None`.
    """

    def __init__(self, data, image_folder=None):
        if isinstance(data, (str, os.PathLike)):
            with open(data, encoding="utf-8") as file:
                data = json.load(file)
        if not isinstance(data, list) or not all(is_llava_sample(sample) for sample in data):
            raise ValueError("LLaVA data must be a JSON list of objects, each with a 'conversations' list.")
        self.samples = data
        self.image_folder = image_folder

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> str | None:
        """Absolute path of sample `index`'s image, or `None` for a text-only sample."""
        relative_path = self.samples[index].get("image")
        if relative_path is None:
            return None
        if not isinstance(relative_path, (str, os.PathLike)):
            raise ValueError(
                f"Sample {self.samples[index].get('id', index)}: 'image' must be one path (Croc takes one image per "
                f"sample), got {type(relative_path).__name__}."
            )
        if self.image_folder is None:
            sample_id = self.samples[index].get("id", index)
            raise ValueError(f"Sample {sample_id} has an image but no image_folder was given.")
        return os.path.join(self.image_folder, relative_path)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        path = self.image_path(index)
        image = None
        if path is not None:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Image of sample {sample.get('id', index)} not found: {path}")
            image = PIL.Image.open(path)
            image.load()
        return {"id": sample.get("id", index), "conversations": sample["conversations"], "image": image}


def llava_to_messages(conversations: list[dict]) -> list[dict]:
    """LLaVA turns to chat messages; a leading non-human turn is dropped, as the official `preprocess` does."""
    if conversations and conversations[0].get("from") not in ("human", "system"):
        conversations = conversations[1:]
    messages = []
    for turn in conversations:
        role = ROLE_OF_SPEAKER.get(turn.get("from"))
        if role is None:
            raise ValueError(f"Unknown speaker {turn.get('from')!r}: LLaVA turns come 'from' 'human' or 'gpt'.")
        messages.append({"role": role, "content": turn["value"]})
    return messages


def render_v1(conversations: list[dict], chat_template: str) -> tuple[str, list[tuple[int, int]]]:
    """The vicuna_v1 prompt of a LLaVA conversation and the character spans of its supervised answers (+ `</s>`)."""
    rendered, generation_spans = render_jinja_template(
        conversations=[llava_to_messages(conversations)],
        chat_template=chat_template,
        return_assistant_tokens_mask=True,
    )
    return rendered[0], [tuple(span) for span in generation_spans[0]]


def render_plain(conversations: list[dict], image_token: str) -> tuple[str, list[tuple[int, int]]]:
    """LLaVA's stage-1 `plain` format: `<image>` + caption (the gpt turn) + "\\n"; the caption and "\\n" supervised."""
    if len(conversations) != 2 or image_token not in conversations[0]["value"]:
        raise ValueError(
            f"The plain format needs exactly one human turn containing {image_token} and one gpt caption turn, "
            f"got {len(conversations)} turn(s)."
        )
    text = image_token + conversations[1]["value"] + "\n"
    return text, [(len(image_token), len(text))]


def with_leading_space(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """
    Extend each span over the space before it (the one of `"ASSISTANT: "`). The official v1 mask supervises from
    the token holding that space: usually the answer's first token (`"▁A"`), but a lone `"▁"` when the answer starts
    with a character SentencePiece does not merge with it (a newline, a digit).
    """
    return [(start - 1, end) if start > 0 and text[start - 1] == " " else (start, end) for start, end in spans]


def supervised_token_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Tokens whose characters overlap a supervised span (zero-width tokens such as BOS never do)."""
    return [
        token_end > token_start
        and any(token_start < span_end and token_end > span_start for span_start, span_end in spans)
        for token_start, token_end in offsets
    ]


def tokens_cover_span(offsets: list[tuple[int, int]], positions: list[int], span: tuple[int, int]) -> bool:
    """Whether the tokens at `positions` (in order) cover the characters of `span` without a gap."""
    span_start, span_end = span
    if not positions or offsets[positions[0]][0] > span_start:
        return False
    covered_until = span_start
    for position in positions:
        if offsets[position][0] > covered_until:
            return False
        covered_until = max(covered_until, offsets[position][1])
    return covered_until >= span_end


def tokens_spell_span(tokenizer, token_ids: list[int], span_text: str) -> bool:
    """
    Whether the tokens decode to the span's text (up to surrounding whitespace), and end on the EOS id when the text
    ends with the EOS string (a tokenizer that splits `</s>` would otherwise silently never learn to stop).
    """
    if tokenizer.decode(token_ids).strip() != span_text.strip():
        return False
    eos_token = tokenizer.eos_token
    return not (eos_token and span_text.endswith(eos_token) and token_ids[-1] != tokenizer.eos_token_id)


def mask_matches_spans(tokenizer, text, input_ids, offsets, mask, spans) -> bool:
    """Check every supervised span: its supervised tokens cover it without gaps and spell exactly its text."""
    for span_start, span_end in spans:
        positions = [
            position
            for position, (token_start, token_end) in enumerate(offsets)
            if mask[position] and token_start < span_end and token_end > span_start
        ]
        if not tokens_cover_span(offsets, positions, (span_start, span_end)):
            return False
        span_ids = [input_ids[position] for position in positions]
        if not tokens_spell_span(tokenizer, span_ids, text[span_start:span_end]):
            return False
    return True


class CrocDataCollator:
    """
    Turns LLaVA samples (from [`LlavaConversationDataset`]) into a right-padded training batch.

    Each conversation is rendered once (vicuna_v1 through the processor's chat template, or LLaVA's `plain`) and
    tokenised with offsets, by default in chunks between images like the official code (so the ids are the official
    ones). The labels are the tokens overlapping the answers' character spans (each with the space before it, see
    [`with_leading_space`]), and those tokens must cover each answer without gaps and decode back to it (ending on the
    EOS id), so a tokenizer change cannot silently shift the mask. As in the official v1 mask, BOS, the system prompt
    and every `USER: ... ASSISTANT:` span are ignored (-100); each answer and its `</s>` are supervised. If the
    supervised tokens do not cover an answer exactly, the sample's labels are blanked with a warning, like the official
    code.
    Each `<image>` is then expanded to the processor's number of image tokens (labels -100).

    Truncation to `max_length` only cuts text after the last image run; if `max_length` would cut into an image run,
    a `ValueError` names the sample and both lengths (an image cannot be partially spliced into the model).

    Args:
        processor ([`CrocProcessor`]):
            Provides the tokenizer, image processor, image token, token count and chat template.
        max_length (`int`, *optional*):
            Maximum sequence length after image expansion (the official `tokenizer_model_max_length`).
        image_aspect_ratio (`str`, *optional*):
            `"pad"` or `"square"`; defaults to the image processor's setting.
        conversation_format (`str`, *optional*, defaults to `"v1"`):
            `"v1"` (stages 1.5 and 2) or `"plain"` (stage 1 captions).
        tokenize_images_separately (`bool`, *optional*):
            Tokenise the text between images as separate chunks, like the official `tokenizer_image_token`, so the
            ids (and the official v1/plain labels) equal the official ones for SentencePiece tokenizers; `False` =
            one pass. Defaults to the processor's setting (`True` unless changed).

    Returns batches with `input_ids`, `attention_mask`, `labels` (all `(batch, length)`) and, when at least one sample
    has an image, `pixel_values` `(num_images, 3, H, W)` with the images in sample order.
    """

    def __init__(
        self, processor, max_length=None, image_aspect_ratio=None, conversation_format="v1",
        tokenize_images_separately=None,
    ):
        if conversation_format not in CONVERSATION_FORMATS:
            raise ValueError(
                f"conversation_format must be one of {CONVERSATION_FORMATS}, got {conversation_format!r}."
            )
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.image_aspect_ratio = image_aspect_ratio or processor.image_processor.image_aspect_ratio
        self.conversation_format = conversation_format
        if tokenize_images_separately is None:
            tokenize_images_separately = getattr(processor, "tokenize_images_separately", True)
        self.tokenize_images_separately = tokenize_images_separately
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer needs a pad token (Vicuna uses <unk>).")

    def render(self, conversations: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """Prompt text and supervised character spans of one conversation."""
        if self.conversation_format == "plain":
            return render_plain(conversations, self.processor.image_token)
        chat_template = self.processor.chat_template
        if isinstance(chat_template, dict):
            chat_template = chat_template["default"]
        text, spans = render_v1(conversations, chat_template)
        has_answers = any(turn.get("from") == "gpt" for turn in conversations)
        if has_answers and not spans:
            raise ValueError("The processor's chat template marks no answers: it needs {% generation %} blocks.")
        return text, with_leading_space(text, spans)

    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids (one per image placeholder) and character offsets of `text`, chunked at images or in one pass."""
        if self.tokenize_images_separately:
            processor = self.processor
            return tokenize_around_images(
                self.tokenizer, text, processor.image_token, processor.image_token_id, with_offsets=True
            )
        encoding = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        return encoding["input_ids"], encoding["offset_mapping"]

    def tokenize_with_labels(self, sample_id, conversations: list[dict]) -> tuple[list[int], list[int]]:
        """Token ids (one id per image placeholder) and labels of one conversation, checked against its spans."""
        try:
            text, spans = self.render(conversations)
        except Exception as error:
            raise ValueError(f"Sample {sample_id} cannot be formatted: {error}") from error
        input_ids, offsets = self.tokenize_with_offsets(text)
        mask = supervised_token_mask(offsets, spans)
        if not mask_matches_spans(self.tokenizer, text, input_ids, offsets, mask, spans):
            warnings.warn(
                f"Tokenization mismatch in sample {sample_id}: the answer tokens do not line up with the answers; "
                "its labels are ignored (as the official code does).",
                stacklevel=2,
            )
            mask = [False] * len(input_ids)
        labels = [token if supervised else IGNORE_INDEX for token, supervised in zip(input_ids, mask)]
        return input_ids, labels

    def expand_image_tokens(self, input_ids, labels, num_image_tokens: list[int]):
        """Repeat the i-th image placeholder `num_image_tokens[i]` times; labels there are -100."""
        image_token_id = self.processor.image_token_id
        expanded_ids, expanded_labels, image_index = [], [], 0
        for token, label in zip(input_ids, labels):
            if token == image_token_id:
                expanded_ids += [image_token_id] * num_image_tokens[image_index]
                expanded_labels += [IGNORE_INDEX] * num_image_tokens[image_index]
                image_index += 1
            else:
                expanded_ids.append(token)
                expanded_labels.append(label)
        return expanded_ids, expanded_labels

    def truncate(self, sample_id, input_ids, labels):
        """Cut to `max_length`, refusing to cut an image run."""
        if self.max_length is None or len(input_ids) <= self.max_length:
            return input_ids, labels
        image_token_id = self.processor.image_token_id
        image_positions = [position for position, token in enumerate(input_ids) if token == image_token_id]
        image_end = image_positions[-1] + 1 if image_positions else 0
        if image_end > self.max_length:
            raise ValueError(
                f"Sample {sample_id}: its image tokens end at position {image_end} but max_length is "
                f"{self.max_length}; truncation would cut an image. Raise max_length or shorten the prompt."
            )
        return input_ids[: self.max_length], labels[: self.max_length]

    def check_placeholders(self, sample_id, input_ids, has_image: bool) -> None:
        num_placeholders = input_ids.count(self.processor.image_token_id)
        if num_placeholders != int(has_image):
            raise ValueError(
                f"Sample {sample_id} has {int(has_image)} image(s) but {num_placeholders} "
                f"{self.processor.image_token} placeholder(s) in its conversation."
            )

    def process_images(self, images: list) -> torch.Tensor | None:
        if not images:
            return None
        return self.processor.image_processor(
            images, image_aspect_ratio=self.image_aspect_ratio, return_tensors="pt"
        )["pixel_values"]

    def pad(self, sequences: list[list[int]], value: int) -> torch.Tensor:
        """Right-pad to the longest sequence."""
        length = max(len(sequence) for sequence in sequences)
        padded = [sequence + [value] * (length - len(sequence)) for sequence in sequences]
        return torch.tensor(padded, dtype=torch.long)

    def __call__(self, samples: list[dict]) -> dict:
        images = [sample["image"] for sample in samples if sample.get("image") is not None]
        pixel_values = self.process_images(images)
        all_input_ids, all_labels, image_index = [], [], 0
        for position, sample in enumerate(samples):
            sample_id = sample.get("id", position)
            has_image = sample.get("image") is not None
            input_ids, labels = self.tokenize_with_labels(sample_id, sample["conversations"])
            self.check_placeholders(sample_id, input_ids, has_image)
            num_image_tokens = []
            if has_image:
                num_image_tokens = [self.processor.num_image_tokens(*pixel_values[image_index].shape[-2:])]
                image_index += 1
            input_ids, labels = self.expand_image_tokens(input_ids, labels, num_image_tokens)
            input_ids, labels = self.truncate(sample_id, input_ids, labels)
            all_input_ids.append(input_ids)
            all_labels.append(labels)
        batch = {
            "input_ids": self.pad(all_input_ids, self.tokenizer.pad_token_id),
            "attention_mask": self.pad([[1] * len(ids) for ids in all_input_ids], 0),
            "labels": self.pad(all_labels, IGNORE_INDEX),
        }
        if pixel_values is not None:
            batch["pixel_values"] = pixel_values
        return batch


__all__ = ["LlavaConversationDataset", "CrocDataCollator", "IGNORE_INDEX"]
