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
"""Quickstart: convert the bundled tiny official-format Croc checkpoint, then describe the bundled image with it.

    python examples/quickstart.py

No arguments and no network. The bundled checkpoint has the exact layout of the released
`DeepGlint-AI/LLaVA-v1.5-Croc-7b` (official LLaVA-fork format) at a tiny random size, so the description it
prints is gibberish; the steps are the ones you run for the real model.
"""

import argparse
import tempfile
from pathlib import Path

import PIL.Image
import torch
from bundled import BUNDLED_IMAGE, convert_bundled_checkpoint
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling_croc  # noqa: F401  (registers Croc with the Auto classes)

REAL_MODEL_HINT = (
    "python conversion/convert_croc_to_hf.py --checkpoint DeepGlint-AI/LLaVA-v1.5-Croc-7b "
    "--vision-tower openai/clip-vit-large-patch14-336 --tokenizer lmsys/vicuna-7b-v1.5 --output croc-7b-hf"
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(BUNDLED_IMAGE), help="image to describe (default: bundled)")
    parser.add_argument("--prompt", default="Describe this image in detail.", help="the user's instruction")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="length of the answer (default: 24)")
    return parser.parse_args()


def main():
    args = parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        converted = convert_bundled_checkpoint(Path(workdir) / "croc-tiny-hf")
        model = AutoModelForImageTextToText.from_pretrained(converted).eval()
        processor = AutoProcessor.from_pretrained(converted)

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.prompt}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        image = PIL.Image.open(args.image)
        inputs = processor(images=[image], text=prompt, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    print(f"model: {type(model).__name__} ({model.num_parameters():,} parameters, tiny random weights)")
    print(f"prompt: {prompt}")
    print(f"answer: {answer}")
    print()
    print("For the released Croc-7B, convert it once (about 15 GB of downloads and disk), then load the folder:")
    print(f"  {REAL_MODEL_HINT}")
    print('  model = AutoModelForImageTextToText.from_pretrained("croc-7b-hf", dtype="bfloat16")')


if __name__ == "__main__":
    main()
