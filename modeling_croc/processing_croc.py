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
"""Processor for Croc: image processor + Vicuna tokenizer, `<image>` expansion and the official vicuna_v1 template."""

import json
import re

from transformers import AddedToken, BatchFeature
from transformers import processing_utils
from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin, Unpack

from .image_processing_croc import CrocImageProcessor, CrocImageProcessorKwargs, flatten_images


# transformers' prefix that skips placeholders the user marked as plain text (`sanitize_control_tokens`), if any.
UNMARKED_PREFIX = getattr(processing_utils, "_UNMARKED", "")
# transformers' pattern of such marked spans, removed before counting placeholders.
MARKED_PATTERN = getattr(processing_utils, "_MARKED_RE", None)

# Tokenizer call options the chunked tokenisation forwards to each chunk, and those it applies to the joined ids.
CHUNK_TOKENIZER_OPTIONS = ("split_special_tokens", "sanitize_control_tokens")
BATCH_TOKENIZER_OPTIONS = (
    "padding", "padding_side", "truncation", "max_length", "pad_to_multiple_of", "return_tensors",
    "return_attention_mask", "add_special_tokens", "return_offsets_mapping",
)


VICUNA_V1_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# The official `conv_vicuna_v1` format (LLaVA-1.5 / Croc stages 1.5, 2 and inference):
#   "{system} USER: <image>\n{instruction} ASSISTANT: {answer}</s>USER: {instruction} ASSISTANT: {answer}</s>"
# A system message replaces the default system prompt. Image placeholders of a user message (content blocks of type
# "image" or literal "<image>" strings) move to its start, one "<image>\n" each, and the result is stripped, as the
# official `preprocess_multimodal` does (so an image-only turn reads "USER: <image> ASSISTANT:"). Text blocks of one
# message are joined with "\n". The generation prompt is "ASSISTANT:" without a trailing space. Answers are wrapped in
# {% generation %}, so `return_assistant_tokens_mask=True` marks exactly the official supervised span (answer +
# "</s>").
CROC_CHAT_TEMPLATE = (
    "{%- set default_system = \"" + VICUNA_V1_SYSTEM_PROMPT + "\" -%}"
    """
{%- macro message_text(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- else -%}
        {%- set ns = namespace(parts=[]) -%}
        {%- for block in content if block['type'] == 'text' -%}
            {%- set ns.parts = ns.parts + [block['text']] -%}
        {%- endfor -%}
        {{- ns.parts | join('\n') -}}
    {%- endif -%}
{%- endmacro -%}
{%- macro image_count(content) -%}
    {%- if content is string -%}
        {{- content.count('<image>') -}}
    {%- else -%}
        {{- content | selectattr('type', 'equalto', 'image') | list | length -}}
    {%- endif -%}
{%- endmacro -%}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set system_prompt = message_text(messages[0]['content']) -%}
    {%- set turns = messages[1:] -%}
{%- else -%}
    {%- set system_prompt = default_system -%}
    {%- set turns = messages -%}
{%- endif -%}
{{- system_prompt + ' ' -}}
{%- for message in turns -%}
    {%- set expected_role = 'user' if loop.index0 % 2 == 0 else 'assistant' -%}
    {%- if message['role'] != expected_role -%}
        {{- raise_exception('Croc conversations alternate user/assistant turns, starting with user (after an '
            ~ 'optional first system message); got role ' ~ message['role'] ~ ' at turn ' ~ loop.index0) -}}
    {%- endif -%}
    {%- if message['role'] == 'user' -%}
        {%- set num_images = image_count(message['content']) | int -%}
        {%- set text = message_text(message['content']) -%}
        {%- if num_images > 0 -%}
            {%- set text = ('<image>\n' * num_images + (text.replace('<image>', '') | trim)) | trim -%}
        {%- endif -%}
        {{- 'USER: ' + text + ' ' -}}
    {%- else -%}
        {{- 'ASSISTANT: ' -}}
        {%- generation -%}
            {{- message_text(message['content']) + '</s>' -}}
        {%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- 'ASSISTANT:' -}}
{%- endif -%}
"""
)


def add_image_token(tokenizer, image_token: str = "<image>") -> int:
    """
    Add the input-only image placeholder to a tokenizer, once, and return its id.

    It is added as a special token (`special=True`, `normalized=False`), so it is never split and is skipped when
    decoding with `skip_special_tokens=True`. On a Vicuna tokenizer of 32000 tokens it gets id 32000 (the text vocab
    size): the model never embeds it, the image features replace it.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            The tokenizer to extend in place.
        image_token (`str`, *optional*, defaults to `"<image>"`):
            The placeholder string.

    Returns:
        `int`: the id of `image_token`.
    """
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(image_token)


# ------------------------------------------------------------------------------------ chunked tokenisation


def prepends_metaspace_prefix(tokenizer) -> bool:
    """
    Whether a fast tokenizer's Metaspace pre-tokenizer adds the SentencePiece prefix "▁" to a separately encoded text.

    It adds it only when the text does not already start with a space, whereas SentencePiece (and so the slow
    `LlamaTokenizer` of the official code) always adds it: `" x"` is `["▁", "▁x"]` there but `["▁x"]` here.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre_tokenizer = getattr(backend, "pre_tokenizer", None)
    if pre_tokenizer is None:
        return False
    state = json.loads(pre_tokenizer.__getstate__())
    steps = state.get("pretokenizers", [state]) if state.get("type") == "Sequence" else [state]
    return any(
        step.get("type") == "Metaspace" and step.get("prepend_scheme", "always") in ("always", "first")
        for step in steps
    )


def encode_chunk(tokenizer, chunk: str, add_special_tokens: bool, with_offsets: bool, **chunk_options):
    """
    Ids (and character offsets within `chunk`, if `with_offsets`) of one text chunk encoded on its own.

    A chunk starting with a space gets the unconditional SentencePiece prefix (see [`prepends_metaspace_prefix`]):
    it is encoded with one extra leading space, whose tokens are mapped onto the chunk's first character.
    """
    extra_space = chunk.startswith(" ") and prepends_metaspace_prefix(tokenizer)
    text = " " + chunk if extra_space else chunk
    encoding = tokenizer(
        text, add_special_tokens=add_special_tokens, return_offsets_mapping=with_offsets, **chunk_options
    )
    ids = list(encoding["input_ids"])
    if not with_offsets:
        return ids, None
    offsets = [tuple(offset) for offset in encoding["offset_mapping"]]
    if extra_space:
        offsets = [(max(start - 1, 0), max(end - 1, 1)) if end > start else (start, end) for start, end in offsets]
    return ids, offsets


def tokenize_around_images(
    tokenizer, text: str, image_token: str, image_token_id: int, add_special_tokens: bool = True,
    with_offsets: bool = False, **chunk_options,
):
    """
    Tokenise `text` like the official `tokenizer_image_token`: the chunks between `image_token` placeholders are
    encoded separately (only the first with the special tokens, i.e. BOS) and each placeholder becomes one
    `image_token_id`. With a SentencePiece-style tokenizer every chunk after an image thus starts with the "▁" prefix.
    Works on prompts whose images are already expanded (a run of placeholders, one id each) or not (one each).

    Returns the ids and, if `with_offsets`, the character span of each id in `text` (offsets need a fast tokenizer),
    else `None`.
    """
    placeholder_runs = re.finditer(f"(?:{UNMARKED_PREFIX}{re.escape(image_token)})+", text)
    input_ids, offsets, chunk_start = [], [], 0
    for run in [*placeholder_runs, None]:
        chunk_end = run.start() if run else len(text)
        chunk_ids, chunk_offsets = encode_chunk(
            tokenizer, text[chunk_start:chunk_end], add_special_tokens and chunk_start == 0, with_offsets,
            **chunk_options,
        )
        input_ids += chunk_ids
        if with_offsets:
            offsets += [(start + chunk_start, end + chunk_start) for start, end in chunk_offsets]
        if run is None:
            break
        placeholder_starts = range(run.start(), run.end(), len(image_token))
        input_ids += [image_token_id] * len(placeholder_starts)
        offsets += [(start, start + len(image_token)) for start in placeholder_starts]
        chunk_start = run.end()
    return input_ids, (offsets if with_offsets else None)


def pad_offsets(offsets: list[tuple[int, int]], length: int, padding_side: str) -> list[tuple[int, int]]:
    """Pad a sample's offsets to `length` with the `(0, 0)` of padding tokens."""
    padding = [(0, 0)] * (length - len(offsets))
    return padding + offsets if padding_side == "left" else offsets + padding


class CrocProcessorKwargs(ProcessingKwargs, total=False):
    images_kwargs: CrocImageProcessorKwargs


class CrocProcessor(ProcessorMixin):
    r"""
    Croc processor: a [`CrocImageProcessor`] and a (Vicuna) tokenizer.

    Each `image_token` in the text is expanded to the number of image features the model splices in,
    `(crop_height // patch_size) * (crop_width // patch_size) + num_additional_image_tokens`, minus 1 (the CLS
    token) when `vision_feature_select_strategy == "default"`: 576 for a 336-px CLIP ViT-L/14. The number of
    placeholders must equal the number of images, and truncation may never cut an image run; both raise a
    `ValueError` giving the two numbers. The default chat template is the official vicuna_v1 format. Train with
    right padding, generate with `padding_side="left"`.

    By default (`tokenize_images_separately=True`) the text between images is tokenised as separate chunks, like the
    official `tokenizer_image_token`, so the ids equal the official ones for SentencePiece (Vicuna) tokenizers: each
    chunk after an image starts with the SentencePiece prefix `"▁"` (`<image>\n` -> `[image..., 29871, 13]` with
    Vicuna), as the released weights were trained and evaluated on. `False` tokenises the expanded prompt in one pass
    like transformers' LLaVA (`[image..., 13]`). Inside a chunk the tokenizer's own settings (e.g. `legacy`, which
    decides whether text right after `</s>` gets the prefix) are used either way.

    Args:
        image_processor ([`CrocImageProcessor`], *optional*):
            The image processor.
        tokenizer ([`PreTrainedTokenizerBase`], *optional*):
            The tokenizer; must already contain `image_token` (see [`add_image_token`]).
        patch_size (`int`, *optional*, defaults to 14):
            Patch size of the vision tower.
        vision_feature_select_strategy (`str`, *optional*, defaults to `"default"`):
            `"default"` drops the CLS token from the image features, `"full"` keeps it. Same as the model config.
        chat_template (`str`, *optional*):
            A Jinja chat template; defaults to the official vicuna_v1 template (`CROC_CHAT_TEMPLATE`).
        image_token (`str`, *optional*, defaults to `"<image>"`):
            The image placeholder string.
        num_additional_image_tokens (`int`, *optional*, defaults to 1):
            Extra tokens the vision tower emits besides the patches (1 for CLIP's CLS).
        tokenize_images_separately (`bool`, *optional*, defaults to `True`):
            Tokenise the text between images as separate chunks, like the official `tokenizer_image_token`, so the
            ids equal the official ones for SentencePiece tokenizers; `False` = one pass like transformers' LLaVA.
    """

    valid_processor_kwargs = CrocProcessorKwargs

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size: int = 14,
        vision_feature_select_strategy: str = "default",
        chat_template: str | None = None,
        image_token: str = "<image>",
        num_additional_image_tokens: int = 1,
        tokenize_images_separately: bool = True,
        **kwargs,
    ):
        if vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full', got {vision_feature_select_strategy!r}."
            )
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
        self.tokenize_images_separately = tokenize_images_separately
        self.image_token = image_token
        self.image_token_id = self._lookup_image_token_id(tokenizer, image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CROC_CHAT_TEMPLATE)

    @staticmethod
    def _lookup_image_token_id(tokenizer, image_token: str) -> int:
        if image_token not in tokenizer.get_vocab():
            raise ValueError(
                f"The tokenizer has no {image_token!r} token. Add it once with "
                f"`modeling_croc.processing_croc.add_image_token(tokenizer)` before building the processor."
            )
        return tokenizer.convert_tokens_to_ids(image_token)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Load the image processor as `CrocImageProcessor` directly, so no Auto-class registration is needed."""
        image_processor = CrocImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        subfolder = kwargs.pop("subfolder", "")
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        return [image_processor, tokenizer]

    # ------------------------------------------------------------------------------------------ token counting

    def num_image_tokens(self, height: int, width: int) -> int:
        """Number of image tokens for a processed image of `height` x `width` pixels."""
        num_tokens = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        if self.vision_feature_select_strategy == "default":
            num_tokens -= 1
        return num_tokens

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        height, width = image_inputs["pixel_values"][image_idx].shape[-2:]
        return self.image_token * self.num_image_tokens(height, width)

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """
        Computes the number of placeholder tokens needed for images of the given sizes.

        Args:
            image_sizes (`list[list[int]]`, *optional*):
                The input sizes as (height, width) per image.

        Returns:
            `MultiModalData`: `num_image_tokens` and `num_image_patches` (always 1) per image.
        """
        vision_data = {}
        if image_sizes is not None:
            images_kwargs = self._merge_kwargs(**kwargs)["images_kwargs"]
            num_image_tokens = [
                self.num_image_tokens(*self.image_processor.output_image_size(height, width, **images_kwargs))
                for height, width in image_sizes
            ]
            vision_data = {"num_image_tokens": num_image_tokens, "num_image_patches": [1] * len(image_sizes)}
        return MultiModalData(**vision_data)

    # ------------------------------------------------------------------------------------------- validation

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Check that there are as many `image_token` strings in the text as images, naming both numbers."""
        if images is None and text is None:
            raise ValueError("CrocProcessor needs `text`, `images` or both.")
        if text is None:
            return
        if isinstance(text, str):
            text = [text]
        if not isinstance(text, (list, tuple)) or not all(isinstance(sample, str) for sample in text):
            raise ValueError("`text` must be a string or a list of strings.")
        num_placeholders = sum(sample.count(self.image_token) for sample in text)
        num_images = 0 if images is None else len(flatten_images(images))
        if num_placeholders != num_images:
            raise ValueError(
                f"The text contains {num_placeholders} {self.image_token} placeholder(s) but {num_images} image(s) "
                f"were given; they must match (one {self.image_token} per image, in order)."
            )

    def _check_special_mm_tokens(self, text, text_inputs, modalities):
        """Refuse outputs where truncation removed image tokens: a cut image run cannot be spliced by the model."""
        pattern = UNMARKED_PREFIX + re.escape(self.image_token)
        expected_image_tokens = [len(re.findall(pattern, sample_text)) for sample_text in text]
        self._check_image_tokens_kept(expected_image_tokens, text_inputs["input_ids"])

    def _check_image_tokens_kept(self, expected_image_tokens: list[int], input_ids) -> None:
        """Raise if a sample kept fewer image tokens than `expected_image_tokens` says it had."""
        for sample_idx, (expected, sample_ids) in enumerate(zip(expected_image_tokens, input_ids)):
            sample_ids = sample_ids.tolist() if hasattr(sample_ids, "tolist") else list(sample_ids)
            kept = sample_ids.count(self.image_token_id)
            if kept != expected:
                raise ValueError(
                    f"Truncation cut an image in sample {sample_idx}: its images need {expected} image tokens but "
                    f"only {kept} remain within max_length. Increase max_length, or shorten the text yourself; "
                    "image tokens are never truncated."
                )

    # -------------------------------------------------------------------------------------------- chat

    def apply_chat_template(self, conversation, chat_template=None, images=None, processor_kwargs=None, **kwargs):
        """
        Like [`ProcessorMixin.apply_chat_template`], also accepting `images=` (one image per `{"type": "image"}`
        block, in order; a list per conversation when batched) and the padding/truncation arguments directly.
        """
        processor_kwargs = dict(processor_kwargs or {})
        if images is not None:
            processor_kwargs["images"] = images
        for key in ("padding", "padding_side", "truncation", "max_length"):
            if key in kwargs:
                processor_kwargs[key] = kwargs.pop(key)
        return super().apply_chat_template(
            conversation, chat_template=chat_template, processor_kwargs=processor_kwargs, **kwargs
        )

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs: Unpack[CrocProcessorKwargs]):
        """
        Tokenise `text` with every `image_token` expanded, and process `images` into `pixel_values`.

        With `tokenize_images_separately` (the default) the text between images is tokenised chunk by chunk like the
        official code, then truncated and padded as a tokenizer call would; `offset_mapping` then indexes the expanded
        prompt as in one-pass mode. Tokenizer options other than padding, truncation, `max_length`,
        `pad_to_multiple_of`, `return_tensors`, `return_attention_mask`, `return_offsets_mapping`,
        `add_special_tokens`, `split_special_tokens` and `sanitize_control_tokens` raise a `ValueError` in that mode.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, path, or a (nested) list of these, *optional*):
                One image per `image_token` in `text`, in order.
            text (`str` or `list[str]`, *optional*):
                The prompt(s), typically from `apply_chat_template`.
            **kwargs:
                Tokenizer arguments (`padding`, `padding_side`, `truncation`, `max_length`, `return_tensors`, ...)
                and image processor arguments (`image_aspect_ratio`, ...).

        Returns:
            [`BatchFeature`]: `input_ids`, `attention_mask` and, with images, `pixel_values`.
        """
        if not self.tokenize_images_separately or text is None:
            return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)
        texts = [text] if isinstance(text, str) else list(text)
        self.validate_inputs(images=images, text=self._unmarked(texts, kwargs), videos=videos, audio=audio)
        image_outputs = {}
        if images is not None:  # the base class processes the images; the text is tokenised here
            image_outputs = dict(super().__call__(images=images, videos=videos, audio=audio, **kwargs))
        merged_kwargs = self._merge_kwargs(
            CrocProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        text_kwargs = merged_kwargs["text_kwargs"]
        return_mm_token_type_ids = text_kwargs.pop(
            "return_mm_token_type_ids", merged_kwargs.get("return_mm_token_type_ids")
        )
        return_replacement_offsets = text_kwargs.pop(
            "return_text_replacement_offsets", merged_kwargs.get("return_text_replacement_offsets")
        )
        replacements = [
            self.image_token * self.num_image_tokens(*pixels.shape[-2:])
            for pixels in image_outputs.get("pixel_values", [])
        ]
        expanded_texts, replacement_offsets = self.get_text_with_replacements(texts, replacements)
        text_inputs = self._tokenize_in_chunks(expanded_texts, text_kwargs)
        self._check_special_mm_tokens(expanded_texts, text_inputs, modalities=["image"])
        if return_replacement_offsets:
            text_inputs["text_replacement_offsets"] = replacement_offsets
        if return_mm_token_type_ids:
            text_inputs["mm_token_type_ids"] = self.create_mm_token_type_ids(text_inputs["input_ids"])
        return BatchFeature({**text_inputs, **image_outputs}, tensor_type=text_kwargs.get("return_tensors"))

    @staticmethod
    def _unmarked(texts: list[str], kwargs: dict) -> list[str]:
        """The texts without the spans `sanitize_control_tokens` marked as plain text (they are not placeholders)."""
        if kwargs.get("sanitize_control_tokens") and MARKED_PATTERN is not None:
            return [MARKED_PATTERN.sub("", sample) for sample in texts]
        return texts

    def _tokenize_in_chunks(self, texts: list[str], text_kwargs: dict) -> dict:
        """
        Tokenise the image-expanded `texts` around their image runs (see [`tokenize_around_images`]), then truncate
        and pad them as the one-pass tokenizer call would: `input_ids`, `attention_mask` (and `offset_mapping`).
        """
        unsupported = sorted(
            key for key, value in text_kwargs.items()
            if value not in (None, False) and key not in BATCH_TOKENIZER_OPTIONS + CHUNK_TOKENIZER_OPTIONS
        )
        if unsupported:
            raise ValueError(
                f"Tokenizer option(s) {unsupported} are not supported with tokenize_images_separately=True; build the "
                "processor with tokenize_images_separately=False to tokenise in one pass."
            )
        chunk_options = {key: text_kwargs[key] for key in CHUNK_TOKENIZER_OPTIONS if key in text_kwargs}
        with_offsets = bool(text_kwargs.get("return_offsets_mapping"))
        all_input_ids, all_offsets = [], []
        for sample in texts:
            input_ids, offsets = tokenize_around_images(
                self.tokenizer, sample, self.image_token, self.image_token_id,
                add_special_tokens=text_kwargs.get("add_special_tokens", True), with_offsets=with_offsets,
                **chunk_options,
            )
            all_input_ids.append(self._truncate(input_ids, text_kwargs))
            all_offsets.append(self._truncate(offsets, text_kwargs) if with_offsets else None)
        padding_side = text_kwargs.get("padding_side") or self.tokenizer.padding_side
        padded = dict(
            self.tokenizer.pad(
                {"input_ids": all_input_ids},
                padding=text_kwargs.get("padding", False),
                max_length=text_kwargs.get("max_length"),
                pad_to_multiple_of=text_kwargs.get("pad_to_multiple_of"),
                padding_side=padding_side,
                return_attention_mask=text_kwargs.get("return_attention_mask"),
            )
        )
        if with_offsets:
            padded["offset_mapping"] = [
                pad_offsets(offsets, len(input_ids), padding_side)
                for offsets, input_ids in zip(all_offsets, padded["input_ids"])
            ]
        return padded

    def _truncate(self, sequence: list, text_kwargs: dict) -> list:
        """Cut a sample's ids (or offsets) to `max_length` on the tokenizer's truncation side, as a tokenizer would."""
        truncation = text_kwargs.get("truncation")
        if truncation in (None, False, "do_not_truncate"):
            return sequence
        max_length = text_kwargs.get("max_length") or self.tokenizer.model_max_length
        if len(sequence) <= max_length:
            return sequence
        if self.tokenizer.truncation_side == "left":
            return sequence[len(sequence) - max_length :]
        return sequence[:max_length]


__all__ = ["CrocProcessor", "add_image_token", "CROC_CHAT_TEMPLATE", "VICUNA_V1_SYSTEM_PROMPT"]
