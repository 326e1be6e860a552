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
"""The examples' embedded defaults: the tiny official-format Croc checkpoint and a few LLaVA-format samples."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # the `conversion` scripts live beside the package

from conversion.convert_croc_to_hf import convert_croc_checkpoint  # noqa: E402

FIXTURES = REPO_ROOT / "tests" / "fixtures"
BUNDLED_CHECKPOINT = FIXTURES / "croc-tiny-official"  # official layout: croc/, clip/, tokenizer/, image.png
BUNDLED_IMAGE = BUNDLED_CHECKPOINT / "image.png"
BUNDLED_CONVERSATIONS = FIXTURES / "conversations.json"  # LLaVA format, images relative to BUNDLED_IMAGES
BUNDLED_IMAGES = FIXTURES / "images"


def convert_bundled_checkpoint(output_dir) -> Path:
    """Convert the bundled tiny official checkpoint (with its tokenizer) into a Hugging Face folder; return it."""
    output = Path(output_dir)
    if (output / "config.json").exists():
        return output
    return Path(
        convert_croc_checkpoint(
            checkpoint=str(BUNDLED_CHECKPOINT / "croc"),
            vision_tower=str(BUNDLED_CHECKPOINT / "clip"),
            tokenizer=str(BUNDLED_CHECKPOINT / "tokenizer"),
            output=str(output),
        )
    )


__all__ = [
    "BUNDLED_CHECKPOINT",
    "BUNDLED_CONVERSATIONS",
    "BUNDLED_IMAGE",
    "BUNDLED_IMAGES",
    "REPO_ROOT",
    "convert_bundled_checkpoint",
]
