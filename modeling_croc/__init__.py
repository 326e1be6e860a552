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
"""Croc and X-Former as native transformers models; importing the package registers them with the Auto classes."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .configuration_croc import CrocConfig
from .configuration_xformer import XFormerConfig
from .image_processing_croc import CrocImageProcessor
from .modeling_croc import CrocForConditionalGeneration, CrocModel, CrocPreTrainedModel
from .modeling_xformer import XFormerForConditionalGeneration, XFormerModel, XFormerPreTrainedModel
from .processing_croc import CrocProcessor
from .processing_xformer import XFormerProcessor

__version__ = "0.1.0"

# Auto classes: `AutoModel*.from_pretrained(folder)` returns these classes once the package is imported.
AutoConfig.register("croc", CrocConfig, exist_ok=True)
AutoModel.register(CrocConfig, CrocModel, exist_ok=True)
AutoModelForImageTextToText.register(CrocConfig, CrocForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(CrocConfig, image_processor_classes={"pil": CrocImageProcessor}, exist_ok=True)
AutoProcessor.register(CrocConfig, CrocProcessor, exist_ok=True)

AutoConfig.register("xformer", XFormerConfig, exist_ok=True)
AutoModel.register(XFormerConfig, XFormerModel, exist_ok=True)
AutoModelForImageTextToText.register(XFormerConfig, XFormerForConditionalGeneration, exist_ok=True)
AutoProcessor.register(XFormerConfig, XFormerProcessor, exist_ok=True)

# Saved folders carry the code and an `auto_map`, so they load with `trust_remote_code=True` without this package.
CrocConfig.register_for_auto_class()
CrocModel.register_for_auto_class("AutoModel")
CrocForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
CrocImageProcessor.register_for_auto_class("AutoImageProcessor")
CrocProcessor.register_for_auto_class("AutoProcessor")

XFormerConfig.register_for_auto_class()
XFormerModel.register_for_auto_class("AutoModel")
XFormerForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "CrocConfig",
    "CrocForConditionalGeneration",
    "CrocImageProcessor",
    "CrocModel",
    "CrocPreTrainedModel",
    "CrocProcessor",
    "XFormerConfig",
    "XFormerForConditionalGeneration",
    "XFormerModel",
    "XFormerPreTrainedModel",
    "XFormerProcessor",
]
