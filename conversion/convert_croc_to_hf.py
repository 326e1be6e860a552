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
"""Convert an official Croc checkpoint (github.com/deepglint/Croc) into a `CrocForConditionalGeneration` folder."""

# Usage:
#
#     python conversion/convert_croc_to_hf.py --checkpoint DeepGlint-AI/LLaVA-v1.5-Croc-7b \
#         --vision-tower openai/clip-vit-large-patch14-336 --output ./croc-7b-hf [--tokenizer lmsys/vicuna-7b-v1.5] \
#         [--dtype bfloat16] [--max-shard-size 5GB] [--overwrite] [--push-to-hub USER/croc-7b-hf] [--no-verify]
#
# Key mapping (official name -> transformers name; first matching rule wins, `drop` = not written):
#
# | official key                                          | converted key                                      |
# | ----------------------------------------------------- | -------------------------------------------------- |
# | `*.rotary_emb.inv_freq`                               | drop: rebuilt from the config                      |
# | `model.cross_attention.*`                             | drop: created but never called by the official code|
# | `model.vision_tower.vision_tower.vision_model.<rest>` | drop: the tower comes from `--vision-tower`; the   |
# |                                                       | copies are compared with it and differences shown  |
# | `model.mask_token`                                    | `model.prompt_pool`                                |
# | `model.mm_projector.0.<w/b>` / `.2.<w/b>`             | `model.multi_modal_projector.linear_1/linear_2.*`  |
# | `model.(layers|embed_tokens|norm).<rest>`             | `model.language_model.(layers|embed_tokens|norm).*`|
# | `lm_head.weight`                                      | `lm_head.weight`                                   |
# | `transform_block.position_embeddings.weight`          | `reconstruction_head.position_embeddings.weight`   |
# | `transform_block.layers.0.<rest>` (a BertLayer)       | `reconstruction_head.layer.<rest>`                 |
# | `transform_block.resize.<w/b>`                        | `reconstruction_head.out_proj.<w/b>`               |
#
# Vision tower (`--vision-tower`, a CLIP model or CLIP vision model folder):
#
# | CLIP key                                              | converted key                                      |
# | ----------------------------------------------------- | -------------------------------------------------- |
# | `*.position_ids`                                      | drop: a buffer the model rebuilds                  |
# | `text_model.*`, `text_projection.*`,                  | drop: the rest of a full CLIP model                |
# | `visual_projection.*`, `logit_scale`                  |                                                    |
# | `vision_model.<rest>` (transformers 4 layout)         | `model.vision_tower.<rest>`                        |
# | `(embeddings|pre_layrnorm|encoder|post_layernorm).*`  | `model.vision_tower.*` (transformers 5 layout)     |
#
# Any other key stops the conversion. The converted keys are checked against a `CrocForConditionalGeneration` built
# on the meta device from the derived config: each target key exactly once, with the model's shape.
#
# The conversion streams: one input tensor at a time (safetensors, or a memory-mapped pickled shard read through
# `torch.load(weights_only=True, mmap=True)` whose pages are given back after each tensor), written straight into the
# output safetensors shard whose header is computed beforehand. Peak memory is about two of the largest tensors (one
# while writing, two while verifying) on top of the imports, whatever the model or shard size. Everything is written
# into a temporary folder beside the output and moved into place only after verification.

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import logging
import math
import mmap
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("modeling_croc") is None:  # run from a source checkout without `pip install`
    sys.path.insert(0, str(REPO_ROOT))

import transformers  # noqa: E402
from transformers import CLIPVisionConfig, GenerationConfig, LlamaConfig  # noqa: E402
from transformers.dynamic_module_utils import custom_object_save  # noqa: E402

from modeling_croc.configuration_croc import CrocConfig  # noqa: E402
from modeling_croc.modeling_croc import CrocForConditionalGeneration, CrocModel  # noqa: E402

logger = logging.getLogger("convert_croc_to_hf")

# --------------------------------------------------------------------------------------------------------------------
# Mapping tables
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyRule:
    """One row of a mapping table: keys matching `pattern` become `replacement` (a `re.sub` template), or are
    dropped for `reason` when `replacement` is None."""

    pattern: str
    replacement: str | None
    reason: str = ""

    def apply(self, key: str) -> tuple[bool, str | None]:
        """(matched, new key or None)."""
        if re.search(self.pattern, key) is None:
            return False, None
        if self.replacement is None:
            return True, None
        return True, re.sub(self.pattern, self.replacement, key, count=1)


CHECKPOINT_KEY_RULES: tuple[KeyRule, ...] = (
    KeyRule(r"\.rotary_emb\.inv_freq$", None, "rotary tables are rebuilt from the config"),
    KeyRule(r"^model\.cross_attention\.", None, "the official code creates this module but never calls it"),
    KeyRule(r"^model\.vision_tower\.vision_tower\.", None, "the vision tower is taken from --vision-tower"),
    KeyRule(r"^model\.mask_token$", "model.prompt_pool"),
    KeyRule(r"^model\.mm_projector\.0\.(weight|bias)$", r"model.multi_modal_projector.linear_1.\1"),
    KeyRule(r"^model\.mm_projector\.2\.(weight|bias)$", r"model.multi_modal_projector.linear_2.\1"),
    KeyRule(r"^model\.(layers|embed_tokens|norm)\.", r"model.language_model.\1."),
    KeyRule(r"^lm_head\.weight$", "lm_head.weight"),
    KeyRule(r"^transform_block\.position_embeddings\.weight$", "reconstruction_head.position_embeddings.weight"),
    KeyRule(r"^transform_block\.layers\.0\.", "reconstruction_head.layer."),
    KeyRule(r"^transform_block\.resize\.(weight|bias)$", r"reconstruction_head.out_proj.\1"),
)

VISION_TOWER_KEY_RULES: tuple[KeyRule, ...] = (
    KeyRule(r"\.position_ids$", None, "a buffer the model rebuilds"),
    KeyRule(
        r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$)", None, "not part of the vision tower"
    ),
    KeyRule(r"^vision_model\.", "model.vision_tower."),
    KeyRule(r"^(embeddings|pre_layrnorm|encoder|post_layernorm)\.", r"model.vision_tower.\1."),
)

# A vision-tower copy inside the official checkpoint, compared (not converted) against --vision-tower.
CHECKPOINT_TOWER_COPY = KeyRule(r"^model\.vision_tower\.vision_tower\.vision_model\.", "model.vision_tower.")

SUPPORTED_MODEL_TYPES = ("croc_llama", "llava_llama")
SUPPORTED_PROJECTOR_TYPE = "mlp2x_gelu"
SELECT_FEATURE_TO_STRATEGY = {"patch": "default", "cls_patch": "full"}

# Llama fields copied from the official config.json into the text config (rope fields are handled separately).
LLAMA_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "pretraining_tp",
    "attention_bias",
    "attention_dropout",
    "mlp_bias",
    "head_dim",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
    "use_cache",
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAFETENSORS_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
SAFETENSORS_NAME_TO_DTYPE = {name: dtype for dtype, name in SAFETENSORS_DTYPE_NAMES.items()}

WEIGHT_LAYOUTS = (  # (index file, single file), in order of preference
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
HUB_DOWNLOAD_PATTERNS = ("*.json", "*.model", "*.txt", "*.jinja")
MODEL_CARD = REPO_ROOT / "MODEL_CARD.md"
MODEL_ID_PLACEHOLDER = "YOUR_NAMESPACE/Croc-7B-hf"
SAFETENSORS_HEADER_ALIGNMENT = 8
MAX_LISTED_KEYS = 12


class ConversionError(Exception):
    """A problem with the inputs or the output location, reported as one line by the command line."""


class UnknownKeyError(ConversionError):
    """A checkpoint key that no mapping rule places or drops."""


# --------------------------------------------------------------------------------------------------------------------
# Pure key and state-dict conversion
# --------------------------------------------------------------------------------------------------------------------


def apply_key_rules(key: str, rules: Iterable[KeyRule]) -> tuple[str | None, KeyRule]:
    """The converted key (None = dropped) and the rule that decided, or `UnknownKeyError`."""
    for rule in rules:
        matched, new_key = rule.apply(key)
        if matched:
            return new_key, rule
    raise UnknownKeyError(f"no mapping rule for key {key!r}")


def convert_state_dict_key(key: str) -> str | None:
    """Official Croc checkpoint key -> `CrocForConditionalGeneration` key, or None when dropped by the table."""
    return apply_key_rules(key, CHECKPOINT_KEY_RULES)[0]


def convert_vision_tower_key(key: str) -> str | None:
    """CLIP (vision) model key -> `CrocForConditionalGeneration` key, or None when it is not part of the tower."""
    return apply_key_rules(key, VISION_TOWER_KEY_RULES)[0]


def format_keys(keys: Iterable[str]) -> str:
    """At most `MAX_LISTED_KEYS` keys, comma-separated, with a count of the rest."""
    keys = sorted(keys)
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return shown if len(keys) <= MAX_LISTED_KEYS else f"{shown}, ... ({len(keys) - MAX_LISTED_KEYS} more)"


def check_targets(
    sources_by_target: dict[str, list[str]],
    shapes_by_target: dict[str, tuple[int, ...]],
    expected_shapes: dict[str, tuple[int, ...]],
) -> None:
    """Every expected key placed exactly once, nothing else placed, every shape equal to the model's."""
    duplicated = {target: names for target, names in sources_by_target.items() if len(names) > 1}
    if duplicated:
        described = "; ".join(f"{target} <- {', '.join(names)}" for target, names in sorted(duplicated.items()))
        raise ConversionError(f"several source tensors map to the same model key: {described}")
    unplaceable = set(sources_by_target) - set(expected_shapes)
    if unplaceable:
        raise ConversionError(
            "the model has no place for: " + format_keys(f"{sources_by_target[t][0]} (-> {t})" for t in unplaceable)
        )
    missing = set(expected_shapes) - set(sources_by_target)
    if missing:
        raise ConversionError(f"the sources lack {len(missing)} tensor(s) the model needs: {format_keys(missing)}")
    mismatched = [
        f"{sources_by_target[target][0]} {list(shape)} but {target} needs {list(expected_shapes[target])}"
        for target, shape in shapes_by_target.items()
        if tuple(shape) != tuple(expected_shapes[target])
    ]
    if mismatched:
        raise ConversionError(f"wrong tensor shape(s): {'; '.join(sorted(mismatched)[:MAX_LISTED_KEYS])}")


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    expected_shapes: dict[str, tuple[int, ...]] | None = None,
    vision_tower_state_dict: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Rename an in-memory official state dict (plus, optionally, a CLIP state dict) to the transformers layout.

    Dropped keys are left out; an unknown key raises `UnknownKeyError` listing every unknown key. With
    `expected_shapes` (e.g. `{k: v.shape for k, v in model.state_dict().items()}`), the result is checked to hold
    every expected key exactly once with the expected shape.
    """
    converted: dict[str, torch.Tensor] = {}
    sources_by_target: dict[str, list[str]] = {}
    unknown = []
    parts = [(state_dict, CHECKPOINT_KEY_RULES), (vision_tower_state_dict or {}, VISION_TOWER_KEY_RULES)]
    for tensors, rules in parts:
        for key, tensor in tensors.items():
            try:
                new_key = apply_key_rules(key, rules)[0]
            except UnknownKeyError:
                unknown.append(key)
                continue
            if new_key is not None:
                converted[new_key] = tensor
                sources_by_target.setdefault(new_key, []).append(key)
    if unknown:
        raise UnknownKeyError(f"{len(unknown)} key(s) cannot be placed: {format_keys(unknown)}")
    if expected_shapes is not None:
        check_targets(sources_by_target, {k: tuple(v.shape) for k, v in converted.items()}, expected_shapes)
    return converted


# --------------------------------------------------------------------------------------------------------------------
# Sources: folders, Hub repositories, weight files
# --------------------------------------------------------------------------------------------------------------------


def hub_is_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or flag.upper() in ("1", "ON", "YES", "TRUE")


def looks_like_repo_id(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name) is not None


def choose_weight_patterns(repo_id: str) -> list[str]:
    """Download one weight format only: safetensors when the repository has them, else pickled `.bin` files."""
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(repo_id)
    if any(name.endswith(".safetensors") for name in files):
        return ["model*.safetensors"]
    return ["pytorch_model*.bin"]  # not `training_args.bin` and other pickles the conversion never reads


def resolve_source(name: str | os.PathLike, role: str, with_weights: bool = True) -> Path:
    """A local folder, or a Hub repository id downloaded with `snapshot_download`."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ConversionError(f"{role} {name} is a file; expected a folder or a Hub repository id")
    text = str(name)
    if not looks_like_repo_id(text) or text.startswith((".", "/", "~")):
        raise ConversionError(f"{role} folder {name} does not exist")
    if hub_is_offline():
        raise ConversionError(
            f"{role} {name} is not a local folder and the Hugging Face Hub is offline (HF_HUB_OFFLINE=1); "
            "download it first or pass a local folder"
        )
    from huggingface_hub import snapshot_download

    try:
        patterns = list(HUB_DOWNLOAD_PATTERNS) + (choose_weight_patterns(text) if with_weights else [])
        logger.info(f"downloading {text} from the Hugging Face Hub")
        return Path(snapshot_download(repo_id=text, allow_patterns=patterns))
    except Exception as error:  # huggingface_hub raises many types (HTTP, offline, not found, auth)
        raise ConversionError(f"could not download {role} {name} from the Hub: {first_line(error)}") from error


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise ConversionError(f"{what} {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{what} {path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{what} {path} does not hold a JSON object")
    return data


@dataclass(frozen=True)
class TensorInfo:
    """Where one source tensor lives, and what it is, without its data."""

    key: str
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def is_safetensors(file: Path) -> bool:
    return file.suffix == ".safetensors"


def read_index(index_file: Path) -> dict[str, Path]:
    """`weight_map` of a sharded checkpoint's index, key -> shard path, after checking every shard exists."""
    index = read_json(index_file, "index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"index {index_file} has no weight_map")
    files = {key: index_file.parent / name for key, name in weight_map.items()}
    absent = sorted({path.name for path in files.values() if not path.is_file()})
    if absent:
        raise ConversionError(f"index {index_file} names shard(s) that are missing: {', '.join(absent)}")
    return files


def find_weight_files(folder: Path, role: str) -> tuple[list[Path], dict[str, Path]]:
    """The weight files of a folder in reading order, plus the index's key -> file map (empty when unsharded)."""
    for index_name, single_name in WEIGHT_LAYOUTS:
        if (folder / index_name).is_file():
            index = read_index(folder / index_name)
            return sorted(set(index.values())), index
        if (folder / single_name).is_file():
            return [folder / single_name], {}
    expected = ", ".join(name for layout in WEIGHT_LAYOUTS for name in layout)
    raise ConversionError(f"{role} {folder} holds no weights (expected one of: {expected})")


def load_pickled_shard(file: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """A pickled `.bin` state dict through the weights-only unpickler (never arbitrary code), memory-mapped when the
    file format allows it; returns the state dict and whether it is memory-mapped."""
    try:
        try:
            state_dict, mapped = torch.load(file, map_location="cpu", weights_only=True, mmap=True), True
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            state_dict, mapped = torch.load(file, map_location="cpu", weights_only=True), False  # legacy format
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
            culprit = f" (it calls {found.group(1)})" if found else ""
            raise ConversionError(
                f"refused to load {file}: the pickle asks to run code beyond plain tensors{culprit}, which "
                "weights-only loading forbids; use a safetensors version of the checkpoint"
            ) from None
        raise ConversionError(f"cannot read {file}: corrupt or truncated pickle ({first_line(error)})") from None
    except (RuntimeError, EOFError, ValueError) as error:
        raise ConversionError(
            f"cannot read {file}: truncated or not a PyTorch checkpoint ({first_line(error)})"
        ) from None
    if not isinstance(state_dict, dict):
        raise ConversionError(f"{file} does not hold a state dict (found {type(state_dict).__name__})")
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"{file} holds entries that are not tensors: {format_keys(map(str, not_tensors))}")
    return state_dict, mapped


@contextlib.contextmanager
def open_safetensors(file: Path) -> Iterator:
    try:
        with safe_open(str(file), framework="pt") as handle:
            yield handle
    except SafetensorError as error:
        raise ConversionError(
            f"cannot read {file}: truncated or not a safetensors file ({first_line(error)})"
        ) from None


def describe_shard(file: Path) -> list[TensorInfo]:
    """Names, shapes and dtypes of one weight file, reading headers only (safetensors) or mapping it (`.bin`)."""
    if is_safetensors(file):
        infos = []
        with open_safetensors(file) as handle:
            for key in handle.keys():
                tensor_slice = handle.get_slice(key)
                dtype = SAFETENSORS_NAME_TO_DTYPE.get(tensor_slice.get_dtype())
                if dtype is None:
                    raise ConversionError(f"{file}: tensor {key} has unsupported dtype {tensor_slice.get_dtype()}")
                infos.append(TensorInfo(key, file, tuple(tensor_slice.get_shape()), dtype))
        return infos
    state_dict, _ = load_pickled_shard(file)
    infos = [TensorInfo(key, file, tuple(tensor.shape), tensor.dtype) for key, tensor in state_dict.items()]
    del state_dict
    return infos


def list_source_tensors(folder: Path, role: str) -> list[TensorInfo]:
    """Every tensor of a checkpoint folder in file order, checked against its index (if sharded)."""
    files, index = find_weight_files(folder, role)
    infos: list[TensorInfo] = []
    seen: dict[str, Path] = {}
    for file in tqdm(files, desc=f"reading {role} headers", unit="file", disable=None, leave=False):
        for info in describe_shard(file):
            if info.key in seen:
                raise ConversionError(f"tensor {info.key} appears in both {seen[info.key].name} and {file.name}")
            seen[info.key] = file
            infos.append(info)
    misplaced = [key for key, file in index.items() if seen.get(key) != file]
    if misplaced:
        raise ConversionError(
            f"the index of {folder} names tensors that their shard does not hold (truncated or mismatched "
            f"shards?): {format_keys(misplaced)}"
        )
    return infos


def page_releaser() -> Callable[[int, int], None] | None:
    """`madvise(MADV_DONTNEED)` on Linux, else None.

    Pages of a memory-mapped pickled shard count as resident memory once read, and would stay so until the whole shard
    is unmapped. The mapping is private, file-backed and never written, so dropping its pages after a tensor is copied
    out is safe (a later read faults them back in from the file) and keeps memory near one tensor instead of one shard.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise_dontneed = 4

    def release(address: int, length: int) -> None:
        page = mmap.PAGESIZE
        first = -(-address // page) * page  # whole pages inside [address, address + length) only
        last = (address + length) // page * page
        if last > first:
            madvise(first, last - first, madvise_dontneed)

    return release


class TensorReader:
    """Fetches source tensors one at a time: safetensors per tensor (a private copy), pickled shards one memory-mapped
    file at a time, whose pages `done(tensor)` gives back once the tensor has been used."""

    def __init__(self):
        self.pickled_file: Path | None = None
        self.pickled_tensors: dict[str, torch.Tensor] | None = None
        self.pickled_is_mapped = False
        self.release_pages = page_releaser()

    def get(self, info: TensorInfo) -> torch.Tensor:
        if is_safetensors(info.file):
            with open_safetensors(info.file) as handle:
                return handle.get_tensor(info.key)
        if info.file != self.pickled_file:
            self.release()
            self.pickled_tensors, self.pickled_is_mapped = load_pickled_shard(info.file)
            self.pickled_file = info.file
        return self.pickled_tensors[info.key]

    def done(self, tensor: torch.Tensor) -> None:
        """Drop the resident pages of a tensor of the current memory-mapped shard (no-op for anything else)."""
        # Only a file-backed mapping may drop pages: in anonymous memory (legacy pickles) that would zero the data.
        if self.release_pages is None or not self.pickled_is_mapped or tensor.numel() == 0:
            return
        self.release_pages(tensor.data_ptr(), tensor.numel() * tensor.element_size())

    def release(self) -> None:
        self.pickled_file, self.pickled_tensors, self.pickled_is_mapped = None, None, False


# --------------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------------


def check_official_config(official: dict, path: Path) -> None:
    """Refuse configs this converter does not understand, naming the field and the accepted values."""
    model_type = official.get("model_type")
    if model_type == CrocConfig.model_type:
        raise ConversionError(f"{path} is already a converted transformers Croc config (model_type 'croc')")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConversionError(
            f"unsupported model_type {model_type!r} in {path}: expected one of {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(an official Croc or LLaVA-1.5 checkpoint)"
        )
    projector = official.get("mm_projector_type", SUPPORTED_PROJECTOR_TYPE)
    if projector != SUPPORTED_PROJECTOR_TYPE:
        raise ConversionError(f"unsupported mm_projector_type {projector!r} in {path}: only mlp2x_gelu is supported")
    feature = official.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURE_TO_STRATEGY:
        raise ConversionError(
            f"unsupported mm_vision_select_feature {feature!r} in {path}: expected patch or cls_patch"
        )
    merge = official.get("mm_patch_merge_type", "flat")
    if merge != "flat":
        raise ConversionError(f"unsupported mm_patch_merge_type {merge!r} in {path}: only flat is supported")
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if official.get(flag):
            raise ConversionError(f"{flag}=true in {path} adds image tokens to the vocabulary, which Croc never does")


def warn_if_other_tower(official: dict, vision_tower: str | os.PathLike) -> None:
    """A Hub id for --vision-tower that differs from the checkpoint's `mm_vision_tower` is probably a mistake."""
    named = official.get("mm_vision_tower")
    given = str(vision_tower)
    if named and not Path(given).expanduser().exists() and given != named:
        logger.warning(
            f"warning: the checkpoint was trained with mm_vision_tower {named}, but --vision-tower is {given}"
        )


def rope_settings(official: dict) -> dict:
    """transformers 5 `rope_parameters` from the 4.x `rope_theta` / `rope_scaling` fields."""
    parameters = {"rope_type": "default", "rope_theta": float(official.get("rope_theta", 10000.0))}
    scaling = official.get("rope_scaling")
    if scaling:
        parameters.update(scaling)
        parameters["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
        parameters.pop("type", None)
    return parameters


def build_text_config(official: dict) -> LlamaConfig:
    """The Llama config of the language model, from the Llama fields of the official config.json."""
    fields = {name: official[name] for name in LLAMA_FIELDS if official.get(name) is not None}
    fields.setdefault("num_key_value_heads", fields.get("num_attention_heads"))
    text_config = LlamaConfig(**fields, rope_parameters=rope_settings(official))
    theta = text_config.rope_parameters.get("rope_theta")
    if theta != float(official.get("rope_theta", 10000.0)):
        raise ConversionError(
            f"rope_theta {official.get('rope_theta')} did not survive into rope_parameters ({theta})"
        )
    return text_config


def build_vision_config(clip_folder: Path) -> CLIPVisionConfig:
    """The CLIP vision config of `--vision-tower` (a `CLIPVisionModel` folder or a full CLIP model folder)."""
    clip = read_json(clip_folder / "config.json", "vision tower config")
    model_type = clip.get("model_type")
    if model_type == "clip":
        clip = dict(clip.get("vision_config") or {}, model_type="clip_vision_model")
    elif model_type != "clip_vision_model":
        raise ConversionError(
            f"--vision-tower {clip_folder} is not a CLIP model (model_type {model_type!r}; expected clip or "
            "clip_vision_model)"
        )
    for ignored in ("architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path"):
        clip.pop(ignored, None)
    return CLIPVisionConfig.from_dict(clip)


def pick_dtype(requested: str | torch.dtype | None, official: dict, tensors: list[TensorInfo]) -> torch.dtype:
    """`--dtype`, else the checkpoint's `torch_dtype`, else the dtype of its first floating-point tensor."""
    if isinstance(requested, torch.dtype):
        return requested
    name = requested or official.get("torch_dtype") or official.get("dtype")
    if name is None:
        floating = [info.dtype for info in tensors if info.dtype.is_floating_point]
        return floating[0] if floating else torch.float32
    name = str(name).replace("torch.", "")
    if name not in DTYPES:
        raise ConversionError(f"unsupported dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def build_croc_config(
    official: dict, vision_config: CLIPVisionConfig, checkpoint: dict[str, TensorInfo], dtype: torch.dtype
) -> CrocConfig:
    """`CrocConfig` reproducing the official settings: LLaVA-1.5 inference with L2-normalised image tokens."""
    text_config = build_text_config(official)
    mm_hidden = official.get("mm_hidden_size")
    if mm_hidden is not None and mm_hidden != vision_config.hidden_size:
        raise ConversionError(
            f"the checkpoint's projector expects vision features of width {mm_hidden} (mm_hidden_size) but the "
            f"--vision-tower has hidden_size {vision_config.hidden_size}"
        )
    extra = {}
    if "model.mask_token" in checkpoint:
        extra["prompt_pool_size"] = checkpoint["model.mask_token"].shape[0]
    head_ffn = checkpoint.get("transform_block.layers.0.intermediate.dense.weight")
    if head_ffn is not None:
        extra["reconstruction_head_intermediate_size"] = head_ffn.shape[0]
    strategy = SELECT_FEATURE_TO_STRATEGY[official.get("mm_vision_select_feature", "patch")]
    patches = (vision_config.image_size // vision_config.patch_size) ** 2 + (strategy == "full")
    if extra.get("prompt_pool_size", 2048) < round(0.75 * patches):
        extra["pool_matching"] = "nearest"  # a pool smaller than the replaced tokens rules out one-to-one matching
    for sub_config in (text_config, vision_config):
        sub_config.dtype = dtype
    try:
        return CrocConfig(
            text_config=text_config,
            vision_config=vision_config,
            image_token_id=text_config.vocab_size,
            vision_feature_layer=official.get("mm_vision_select_layer", -2),
            vision_feature_select_strategy=strategy,
            projector_hidden_act="gelu",
            multimodal_projector_bias=True,
            normalize_image_features=True,
            image_aspect_ratio=official.get("image_aspect_ratio") or "pad",
            croc_stage=False,
            comprehension_modules=False,  # inference skips the pool and head; their weights stay in the files
            tie_word_embeddings=text_config.tie_word_embeddings,
            dtype=dtype,
            **extra,
        )
    except (ValueError, TypeError) as error:
        raise ConversionError(f"the official config gives an invalid Croc config: {first_line(error)}") from None


def expected_state_dict_shapes(config: CrocConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor the converted files hold, from a model built on the meta device.

    The files always keep the comprehension modules (`from_pretrained(..., comprehension_modules=True)` loads them).
    """
    with_modules = CrocConfig.from_dict({**config.to_dict(), "comprehension_modules": True})
    with torch.device("meta"):
        model = CrocForConditionalGeneration(with_modules)
    shapes = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


# --------------------------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteItem:
    """One output tensor: its source and its converted name."""

    source: TensorInfo
    target: str


@dataclass
class ConversionPlan:
    items: list[WriteItem] = field(default_factory=list)
    tower_copies: list[tuple[TensorInfo, TensorInfo]] = field(default_factory=list)  # (checkpoint copy, CLIP)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> number of tensors

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def readable_pattern(pattern: str) -> str:
    r"""`^model\.cross_attention\.` -> `model.cross_attention.*` (for messages)."""
    text = pattern[1:] if pattern.startswith("^") else "*" + pattern
    text = text.replace("\\.", ".")
    return text[:-1] if text.endswith("$") else f"{text}*" if text.endswith(".") else text


def plan_conversion(
    checkpoint: list[TensorInfo], clip: list[TensorInfo], tie_word_embeddings: bool = False
) -> ConversionPlan:
    """Map every source tensor or drop it by rule; stop with every unknown key listed."""
    plan = ConversionPlan()
    unknown = []
    clip_items = []
    for infos, rules, role in (
        (checkpoint, CHECKPOINT_KEY_RULES, "checkpoint"),
        (clip, VISION_TOWER_KEY_RULES, "tower"),
    ):
        for info in infos:
            try:
                target, rule = apply_key_rules(info.key, rules)
            except UnknownKeyError:
                unknown.append(f"{info.key} ({role})")
                continue
            if target is None:
                plan.drop(f"{rule.reason} ({readable_pattern(rule.pattern)})")
            elif tie_word_embeddings and target == "lm_head.weight":
                plan.drop("lm_head is tied to the input embeddings")
            else:
                (clip_items if role == "tower" else plan.items).append(WriteItem(info, target))
    if unknown:
        raise UnknownKeyError(f"{len(unknown)} key(s) cannot be placed: {format_keys(unknown)}")
    plan.items.extend(clip_items)
    tower_by_target = {item.target: item.source for item in clip_items}
    for info in checkpoint:
        matched, target = CHECKPOINT_TOWER_COPY.apply(info.key)
        if matched and target in tower_by_target:
            plan.tower_copies.append((info, tower_by_target[target]))
    return plan


def check_plan(plan: ConversionPlan, expected_shapes: dict[str, tuple[int, ...]]) -> None:
    sources_by_target: dict[str, list[str]] = {}
    for item in plan.items:
        sources_by_target.setdefault(item.target, []).append(item.source.key)
    shapes = {item.target: item.source.shape for item in plan.items}
    check_targets(sources_by_target, shapes, expected_shapes)


# --------------------------------------------------------------------------------------------------------------------
# Writing safetensors shards
# --------------------------------------------------------------------------------------------------------------------


def parse_size(size: str | int) -> int:
    """'5GB' -> 5e9 bytes (KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024, as in transformers)."""
    if isinstance(size, int):
        return size
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
    if found is None:
        raise ConversionError(f"cannot read the shard size {size!r} (examples: 5GB, 500MB, 2GiB)")
    number, unit = float(found.group(1)), (found.group(2) or "B").upper()
    powers = {
        "B": 1,
        "KB": 1e3,
        "MB": 1e6,
        "GB": 1e9,
        "TB": 1e12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }
    bytes_ = int(number * powers[unit])
    if bytes_ <= 0:
        raise ConversionError(f"the shard size must be positive, got {size!r}")
    return bytes_


def output_dtype(source_dtype: torch.dtype, dtype: torch.dtype) -> torch.dtype:
    """Floating-point tensors take the requested dtype; integer and bool tensors keep theirs."""
    return dtype if source_dtype.is_floating_point else source_dtype


def output_nbytes(item: WriteItem, dtype: torch.dtype) -> int:
    return item.source.numel * output_dtype(item.source.dtype, dtype).itemsize


def plan_output_shards(items: list[WriteItem], dtype: torch.dtype, max_shard_bytes: int) -> list[list[WriteItem]]:
    """Consecutive items grouped into shards of at most `max_shard_bytes` (a larger tensor gets a shard alone)."""
    shards: list[list[WriteItem]] = []
    current, current_bytes = [], 0
    for item in items:
        size = output_nbytes(item, dtype)
        if current and current_bytes + size > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        shards.append(current)
    return shards


def shard_file_name(index: int, total: int) -> str:
    return f"model-{index + 1:05d}-of-{total:05d}.safetensors"


def safetensors_header(items: list[WriteItem], dtype: torch.dtype) -> bytes:
    """The length-prefixed JSON header of a safetensors file holding `items` back to back, in order."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for item in items:
        size = output_nbytes(item, dtype)
        header[item.target] = {
            "dtype": SAFETENSORS_DTYPE_NAMES[output_dtype(item.source.dtype, dtype)],
            "shape": list(item.source.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % SAFETENSORS_HEADER_ALIGNMENT)
    return len(text).to_bytes(8, "little") + text


def cast_for_output(tensor: torch.Tensor, item: WriteItem, dtype: torch.dtype) -> torch.Tensor:
    """The tensor as it is written: cast, contiguous, with its shape checked and float16 overflow refused."""
    if tuple(tensor.shape) != item.source.shape:
        raise ConversionError(f"{item.source.key} in {item.source.file.name} changed shape while reading")
    cast = tensor.to(output_dtype(tensor.dtype, dtype)).contiguous()
    if cast.dtype == torch.float16 and tensor.dtype != torch.float16 and bool(torch.isinf(cast).any()):
        if not bool(torch.isinf(tensor).any()):
            raise ConversionError(f"{item.source.key} has values beyond the float16 range; use --dtype bfloat16")
    return cast


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy little-endian byte view of a contiguous tensor."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def write_safetensors_shard(
    path: Path, items: list[WriteItem], reader: TensorReader, dtype: torch.dtype, progress: tqdm | None = None
) -> None:
    """Write one shard tensor by tensor (the header is known in advance), holding one tensor at a time."""
    with open(path, "wb") as file:
        file.write(safetensors_header(items, dtype))
        for item in items:
            source = reader.get(item.source)
            tensor = cast_for_output(source, item, dtype)
            file.write(tensor_bytes(tensor))
            del tensor
            reader.done(source)
            if progress is not None:
                progress.update(1)


def write_shards(
    folder: Path, shards: list[list[WriteItem]], reader: TensorReader, dtype: torch.dtype
) -> dict[str, str]:
    """All output shards plus `model.safetensors.index.json`; returns the weight map."""
    weight_map: dict[str, str] = {}
    total_items = sum(len(shard) for shard in shards)
    with tqdm(total=total_items, desc="converting tensors", unit="tensor", disable=None) as progress:
        for index, items in enumerate(shards):
            name = shard_file_name(index, len(shards))
            progress.set_postfix_str(name)
            write_safetensors_shard(folder / name, items, reader, dtype, progress)
            weight_map.update({item.target: name for item in items})
    reader.release()
    all_items = [item for shard in shards for item in shard]
    index = {
        "metadata": {
            "total_size": sum(output_nbytes(item, dtype) for item in all_items),
            "total_parameters": sum(item.source.numel for item in all_items),
        },
        "weight_map": dict(sorted(weight_map.items())),
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return weight_map


# --------------------------------------------------------------------------------------------------------------------
# Verification and tower comparison
# --------------------------------------------------------------------------------------------------------------------


INTEGER_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(left: torch.Tensor, right: torch.Tensor) -> bool:
    """Bitwise equality (NaN-safe) of two tensors of the same dtype and shape, compared as integers of their width."""
    if left.dtype != right.dtype or left.shape != right.shape:
        return False
    as_integers = INTEGER_OF_SIZE[left.element_size()]
    return torch.equal(
        left.contiguous().reshape(-1).view(as_integers), right.contiguous().reshape(-1).view(as_integers)
    )


def verify_output(
    folder: Path,
    shards: list[list[WriteItem]],
    reader: TensorReader,
    dtype: torch.dtype,
    expected_shapes: dict[str, tuple[int, ...]],
) -> None:
    """Re-open the written shards and check each tensor equals its source after the cast, and the key set."""
    reloaded = CrocConfig.from_pretrained(folder)
    if expected_state_dict_shapes(reloaded) != expected_shapes:
        raise ConversionError("verification failed: the saved config.json describes a different model")
    index = read_json(folder / "model.safetensors.index.json", "written index")
    written = set(index["weight_map"])
    if written != set(expected_shapes):
        missing, extra = set(expected_shapes) - written, written - set(expected_shapes)
        raise ConversionError(
            f"verification failed: written keys differ from the model's "
            f"(missing {format_keys(missing)}; extra {format_keys(extra)})"
        )
    total_items = sum(len(shard) for shard in shards)
    with tqdm(total=total_items, desc="verifying", unit="tensor", disable=None) as progress:
        for shard_index, items in enumerate(shards):
            path = folder / shard_file_name(shard_index, len(shards))
            for item in items:
                with open_safetensors(path) as handle:
                    written_tensor = handle.get_tensor(item.target)
                source = reader.get(item.source)
                expected = source.to(output_dtype(source.dtype, dtype))
                if not same_bits(written_tensor, expected):
                    raise ConversionError(
                        f"verification failed: {item.target} in {path.name} differs from {item.source.key}"
                    )
                del written_tensor, expected
                reader.done(source)
                progress.update(1)
    reader.release()


def compare_tower_copies(
    copies: list[tuple[TensorInfo, TensorInfo]], reader: TensorReader, clip_reader: TensorReader
) -> None:
    """Report whether the checkpoint's vision-tower tensors equal --vision-tower's (in the checkpoint's dtype)."""
    if not copies:
        return
    differing, largest = [], 0.0
    for copy, clip in tqdm(copies, desc="comparing tower copies", unit="tensor", disable=None, leave=False):
        if copy.shape != clip.shape:
            differing.append(f"{copy.key} (shape {list(copy.shape)} vs {list(clip.shape)})")
            continue
        ours, original = reader.get(copy), clip_reader.get(clip)
        theirs = original.to(ours.dtype)
        if not torch.equal(ours, theirs):
            largest = max(largest, float((ours.float() - theirs.float()).abs().max()))
            differing.append(copy.key)
        del theirs
        reader.done(ours)
        clip_reader.done(original)
    reader.release()
    clip_reader.release()
    if differing:
        logger.warning(
            f"warning: {len(differing)} of the checkpoint's {len(copies)} vision-tower tensors differ from "
            f"--vision-tower (max abs diff {largest:.3g}), e.g. {format_keys(differing[:3])}; the converted model "
            "uses the --vision-tower weights, like the official loader"
        )
    else:
        logger.info(
            f"note: the checkpoint's {len(copies)} vision-tower tensors equal --vision-tower's; using the latter"
        )


# --------------------------------------------------------------------------------------------------------------------
# Side files: config + code, generation config, image processor, tokenizer + processor, model card
# --------------------------------------------------------------------------------------------------------------------


def auto_map_entry(cls: type) -> str:
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def save_config_and_code(config: CrocConfig, folder: Path) -> None:
    """`config.json` with an `auto_map`, plus the package's model code, so the folder loads with
    `trust_remote_code=True` where `modeling_croc` is not installed."""
    config.auto_map = {
        "AutoConfig": auto_map_entry(CrocConfig),
        "AutoModel": auto_map_entry(CrocModel),
        "AutoModelForImageTextToText": auto_map_entry(CrocForConditionalGeneration),
    }
    for cls in (CrocConfig, CrocForConditionalGeneration):
        custom_object_save(cls, folder)  # copies the defining file and its relative imports
    config.architectures = [CrocForConditionalGeneration.__name__]
    config.save_pretrained(folder)


SAMPLING_ONLY_FLAGS = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")


def build_generation_config(source: Path, config: CrocConfig) -> GenerationConfig:
    """The source's generation config when it has one, else bos/eos/pad from the text config.

    transformers 5 refuses to save sampling flags without `do_sample=True` (Vicuna's file has them); they never had
    an effect there, so they are reset rather than turning sampling on.
    """
    text = config.text_config
    if (source / "generation_config.json").is_file():
        values = read_json(source / "generation_config.json", "generation config")
        values = {
            key: value for key, value in values.items() if key not in ("transformers_version", "_from_model_config")
        }
        if not values.get("do_sample"):
            reset = [flag for flag in SAMPLING_ONLY_FLAGS if values.pop(flag, None) is not None]
            if reset:
                logger.info(f"note: generation_config.json: dropped {', '.join(reset)} (ignored without do_sample)")
        generation_config = GenerationConfig(**values)
    else:
        generation_config = GenerationConfig(
            bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id
        )
    try:
        generation_config.validate(strict=True)
    except ValueError as error:
        raise ConversionError(f"the source generation config is invalid: {first_line(error)}") from None
    return generation_config


def clip_processor_settings(clip_folder: Path) -> dict:
    """The CLIP image-processor settings of the tower folder (empty: use CLIP-336 defaults)."""
    path = clip_folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    settings = read_json(path, "image processor config")
    keep = (
        "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
        "do_normalize", "image_mean", "image_std", "do_convert_rgb",
    )  # fmt: skip
    return {key: settings[key] for key in keep if key in settings}


CLIP_336_DEFAULTS = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}


def build_image_processor(clip_folder: Path, config: CrocConfig):
    from modeling_croc.image_processing_croc import CrocImageProcessor

    settings = {**CLIP_336_DEFAULTS, **clip_processor_settings(clip_folder)}
    return CrocImageProcessor(**settings, image_aspect_ratio=config.image_aspect_ratio)


def add_auto_map(json_file: Path, entries: dict[str, str], section: str | None = None) -> None:
    """Merge `entries` into the `auto_map` of a saved JSON config (or of one of its nested sections)."""
    data = read_json(json_file, "saved config")
    target = data if section is None else data[section]
    target["auto_map"] = {**target.get("auto_map", {}), **entries}
    json_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_with_code(obj, folder: Path, json_name: str, auto_class: str) -> None:
    """`obj.save_pretrained(folder)`, plus its code and an `auto_map` entry so `trust_remote_code=True` finds it."""
    obj.save_pretrained(folder)
    custom_object_save(obj, folder)
    add_auto_map(folder / json_name, {auto_class: auto_map_entry(type(obj))})


def find_tokenizer_folder(tokenizer: str | os.PathLike | None, checkpoint_folder: Path) -> Path | None:
    if tokenizer is not None:
        return resolve_source(tokenizer, "tokenizer", with_weights=False)
    if any((checkpoint_folder / name).is_file() for name in TOKENIZER_FILES):
        return checkpoint_folder
    return None


def save_processor(tokenizer_folder: Path, image_processor, config: CrocConfig, folder: Path) -> None:
    """Tokenizer with the input-only `<image>` token at id = vocabulary size, and the `CrocProcessor` around it (with
    its vicuna_v1 chat template), plus the processor code and `auto_map` for `trust_remote_code=True`."""
    from transformers import AutoTokenizer

    from modeling_croc.processing_croc import CrocProcessor, add_image_token

    try:
        with warnings.catch_warnings():  # it may also parse the official config.json, whose 4.x rope fields warn
            warnings.simplefilter("ignore", FutureWarning)
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    except Exception as error:  # tokenizer loading raises many types (OSError, ValueError, sentencepiece errors)
        raise ConversionError(f"cannot load the tokenizer from {tokenizer_folder}: {first_line(error)}") from None
    image_token_id = add_image_token(tokenizer)
    if image_token_id != config.image_token_id:
        raise ConversionError(
            f"the tokenizer puts <image> at id {image_token_id}, but the model expects {config.image_token_id} "
            "(the text vocabulary size): is it the checkpoint's tokenizer?"
        )
    processor = CrocProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS token
    )
    save_with_code(processor, folder, "processor_config.json", "AutoProcessor")
    # AutoImageProcessor reads the image processor nested in processor_config.json before preprocessor_config.json.
    add_auto_map(
        folder / "processor_config.json",
        {"AutoImageProcessor": auto_map_entry(type(image_processor))},
        "image_processor",
    )


def write_model_card(folder: Path, model_id: str) -> None:
    if not MODEL_CARD.is_file():
        logger.info(f"note: {MODEL_CARD} not found; no README.md written")
        return
    card = MODEL_CARD.read_text(encoding="utf-8")
    card = re.sub(r"<!--.*?-->\n?", "", card, flags=re.DOTALL)  # maintainer comments
    (folder / "README.md").write_text(card.replace(MODEL_ID_PLACEHOLDER, model_id), encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------------
# Output location
# --------------------------------------------------------------------------------------------------------------------


def check_output_location(output: Path, overwrite: bool, sources: list[Path]) -> None:
    if output.exists() and not output.is_dir():
        raise ConversionError(f"output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ConversionError(f"output {output} exists and is not empty; pass --overwrite to replace it")
    for source in sources:
        if output == source or output in source.parents:
            raise ConversionError(f"output {output} would replace the input {source}; choose another folder")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staging_folder(output: Path) -> Iterator[Path]:
    """A temporary folder beside `output`, removed unless the body moved it into place (also on Ctrl-C)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{output.name}.tmp-", dir=output.parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; the result should not be
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into_place(staging: Path, output: Path) -> None:
    """Replace `output` by the finished `staging` folder; an old output is removed only once the new one is there."""
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{output.name}.old-", dir=output.parent))
        os.rmdir(old)
        os.rename(output, old)
    try:
        os.rename(staging, output)
    except BaseException:  # also Ctrl-C between the two renames: put the old output back
        if old is not None:
            os.rename(old, output)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def push_folder_to_hub(folder: Path, repo_id: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(folder),
            commit_message="Upload Croc converted to transformers",
        )
    except Exception as error:  # network, auth and offline errors come in many types
        raise ConversionError(
            f"converted into {folder}, but the upload to {repo_id} failed: {first_line(error)}"
        ) from None
    logger.info(f"uploaded {folder} to https://huggingface.co/{repo_id}")


# --------------------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------------------


def convert_croc_checkpoint(
    checkpoint: str | os.PathLike,
    vision_tower: str | os.PathLike,
    output: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    verify: bool = True,
) -> Path:
    """Convert an official Croc checkpoint into a transformers folder at `output` and return its path.

    Args:
        checkpoint: folder or Hub id of the official checkpoint (`config.json` with model_type `croc_llama` or
            `llava_llama`; weights as one or several `.bin` or safetensors files).
        vision_tower: folder or Hub id of the CLIP model the checkpoint's `mm_vision_tower` names.
        output: the folder to create. An existing non-empty folder is replaced only with `overwrite=True`.
        tokenizer: folder or Hub id of the tokenizer (default: the checkpoint folder, if it has tokenizer files).
        dtype: `float32`, `float16` or `bfloat16` (default: the checkpoint's `torch_dtype`).
        max_shard_size: largest output safetensors shard, e.g. `"5GB"`.
        push_to_hub: a Hub repository id to create (if needed) and upload the finished folder to.
        verify: re-read every written tensor and compare it with its source after the dtype cast.

    Raises `ConversionError` for every problem with the inputs or the output location; nothing is left at `output`
    unless the conversion finished.
    """
    started = time.perf_counter()
    output = Path(output).expanduser().absolute()
    max_shard_bytes = parse_size(max_shard_size)
    check_output_location(output, overwrite, [])
    checkpoint_folder = resolve_source(checkpoint, "checkpoint")
    clip_folder = resolve_source(vision_tower, "vision tower")
    tokenizer_folder = find_tokenizer_folder(tokenizer, checkpoint_folder)
    check_output_location(output, overwrite, [p for p in (checkpoint_folder, clip_folder, tokenizer_folder) if p])

    official = read_json(checkpoint_folder / "config.json", "checkpoint config")
    check_official_config(official, checkpoint_folder / "config.json")
    warn_if_other_tower(official, vision_tower)
    vision_config = build_vision_config(clip_folder)
    checkpoint_tensors = list_source_tensors(checkpoint_folder, "checkpoint")
    clip_tensors = list_source_tensors(clip_folder, "vision tower")
    out_dtype = pick_dtype(dtype, official, checkpoint_tensors)
    by_key = {info.key: info for info in checkpoint_tensors}
    config = build_croc_config(official, vision_config, by_key, out_dtype)

    plan = plan_conversion(checkpoint_tensors, clip_tensors, config.tie_word_embeddings)
    expected_shapes = expected_state_dict_shapes(config)
    check_plan(plan, expected_shapes)
    for reason, count in sorted(plan.dropped.items()):
        logger.info(f"note: dropped {count} tensor(s): {reason}")

    reader, clip_reader = TensorReader(), TensorReader()
    compare_tower_copies(plan.tower_copies, reader, clip_reader)
    shards = plan_output_shards(plan.items, out_dtype, max_shard_bytes)
    with staging_folder(output) as staging:
        write_shards(staging, shards, reader, out_dtype)
        save_config_and_code(config, staging)
        build_generation_config(checkpoint_folder, config).save_pretrained(staging)
        image_processor = build_image_processor(clip_folder, config)
        if tokenizer_folder is not None:
            save_processor(tokenizer_folder, image_processor, config, staging)
        else:
            logger.info("note: no tokenizer given or found in the checkpoint; saved the image processor only")
        save_with_code(image_processor, staging, "preprocessor_config.json", "AutoImageProcessor")
        write_model_card(staging, push_to_hub or str(output))
        if verify:
            verify_output(staging, shards, reader, out_dtype, expected_shapes)
        move_into_place(staging, output)

    total_bytes = sum(output_nbytes(item, out_dtype) for item in plan.items)
    logger.info(
        f"converted {len(plan.items)} tensors ({total_bytes / 1e9:.2f} GB, {str(out_dtype).replace('torch.', '')}) "
        f"into {len(shards)} shard(s) at {output} in {time.perf_counter() - started:.1f} s"
        + (" (verified)" if verify else "")
    )
    if push_to_hub:
        push_folder_to_hub(output, push_to_hub)
    return output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="official Croc checkpoint: folder or Hub repository id")
    parser.add_argument("--vision-tower", required=True, help="CLIP vision tower (mm_vision_tower): folder or Hub id")
    parser.add_argument("--output", required=True, help="folder to write the transformers model into")
    parser.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: tokenizer files in the checkpoint)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="weight dtype (default: the checkpoint's torch_dtype)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard (default: 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the converted folder to this Hub repository")
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="re-read and compare every written tensor",
    )
    return parser.parse_args(argv)


class CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at the time of the message (it may be replaced, e.g. by pytest)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def configure_logging() -> None:
    """Notes and warnings as plain lines on stdout; stderr stays for the one error line."""
    handler = CurrentStdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    transformers.logging.set_verbosity_error()


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 on success, 1 with one `error: ...` line on stderr otherwise (130 on Ctrl-C)."""
    args = parse_args(argv)
    configure_logging()
    try:
        convert_croc_checkpoint(
            checkpoint=args.checkpoint,
            vision_tower=args.vision_tower,
            output=args.output,
            tokenizer=args.tokenizer,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
            verify=args.verify,
        )
    except KeyboardInterrupt:
        print("error: interrupted; no unfinished output folder was left behind", file=sys.stderr)
        return 130
    except ConversionError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    except Exception as error:  # last resort: keep the promise of one line, no traceback
        print(f"error: unexpected {type(error).__name__}: {one_line(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "ConversionError",
    "UnknownKeyError",
    "convert_croc_checkpoint",
    "convert_state_dict",
    "convert_state_dict_key",
    "convert_vision_tower_key",
    "main",
]
