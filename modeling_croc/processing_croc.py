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

import re

from transformers import AddedToken
from transformers import processing_utils
from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin, Unpack

from .image_processing_croc import CrocImageProcessor, CrocImageProcessorKwargs, flatten_images


# transformers' prefix that skips placeholders the user marked as plain text (`sanitize_control_tokens`), if any.
UNMARKED_PREFIX = getattr(processing_utils, "_UNMARKED", "")


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

    The prompt is tokenised in one pass, like transformers' LLaVA. The official code tokenises the text chunks around
    each `<image>` separately, so with Vicuna's SentencePiece tokenizer its ids hold one extra `"▁"` (id 29871)
    right after each image (`<image>\n` -> `[image, 29871, 13]` there, `[image, 13]` here).

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
        **kwargs,
    ):
        if vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full', got {vision_feature_select_strategy!r}."
            )
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
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
        for sample_idx, (sample_text, sample_ids) in enumerate(zip(text, text_inputs["input_ids"])):
            sample_ids = sample_ids.tolist() if hasattr(sample_ids, "tolist") else list(sample_ids)
            expected = len(re.findall(UNMARKED_PREFIX + re.escape(self.image_token), sample_text))
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
        return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)


__all__ = ["CrocProcessor", "add_image_token", "CROC_CHAT_TEMPLATE", "VICUNA_V1_SYSTEM_PROMPT"]
