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
"""X-Former stage 1 (ITC + ITM + ITG + MAE reconstruction) and stage 2 (LLM alignment) with `transformers.Trainer`.

With no arguments both stages run on tiny random models and a few synthetic images (well under a minute on a CPU).
A real run starts from the checkpoint `conversion/convert_xformer_init.py` assembles:

    python conversion/convert_xformer_init.py --output xformer-init            # EVA ViT-g + MAE-H + BERT
    torchrun --nproc_per_node 8 examples/pretrain_xformer.py --stage 1 --model xformer-init \\
        --data pairs.json --image-folder images/ --tokenizer bert-base-uncased --output-dir xformer-s1 --bf16
    torchrun --nproc_per_node 8 examples/pretrain_xformer.py --stage 2 --model xformer-s1 \\
        --llm facebook/opt-6.7b --data pairs.json --image-folder images/ --output-dir xformer-s2 --bf16

`pairs.json` is a list of `{"image": "relative/path.jpg", "caption": "..."}`. Defaults follow BLIP-2's recipe (the
paper gives none): AdamW beta2 0.98, weight decay 0.05, peak lr 1e-4, cosine schedule, 2000 warm-up steps, 224 px
random-resized crops (scale 0.5-1) with horizontal flips; X-Former trains 9 epochs in stage 1 and 1 in stage 2 on
14 M pairs. Stage-2 targets are the caption + EOS, right-padded, loss on the text only.
"""

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BertTokenizer, Trainer, TrainingArguments
from transformers.utils import logging


try:
    import modeling_croc  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modeling_croc import XFormerConfig, XFormerForConditionalGeneration, XFormerModel, XFormerProcessor  # noqa: E402
from modeling_croc.processing_xformer import add_dec_token, build_clip_image_processor  # noqa: E402

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ["square", "circle"]


# -- data --------------------------------------------------------------------------------------------------------------


def synthetic_pairs(image_size: int = 56) -> list[tuple[Image.Image, str]]:
    """Eight images: a coloured square or circle on grey, captioned 'a <colour> <shape>'."""
    pairs = []
    for color_name, rgb in COLORS.items():
        for shape in SHAPES:
            image = Image.new("RGB", (image_size, image_size), (128, 128, 128))
            draw = ImageDraw.Draw(image)
            box = (image_size // 5, image_size // 5, 4 * image_size // 5, 4 * image_size // 5)
            (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=rgb)
            pairs.append((image, f"a {color_name} {shape}"))
    return pairs


def json_pairs(data: str, image_folder: str | None) -> list[tuple[str, str]]:
    root = Path(image_folder or ".")
    return [(str(root / item["image"]), item["caption"]) for item in json.loads(Path(data).read_text())]


def random_resized_crop_and_flip(image: Image.Image, size: int, scale=(0.5, 1.0)) -> Image.Image:
    """BLIP-2's train augmentation; both normalisations are then taken from this one crop."""
    width, height = image.size
    area = width * height * random.uniform(*scale)
    side_w = min(width, int(round(area**0.5)))
    side_h = min(height, int(round(area**0.5)))
    left, top = random.randint(0, width - side_w), random.randint(0, height - side_h)
    crop = image.crop((left, top, left + side_w, top + side_h)).resize((size, size), Image.BICUBIC)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < 0.5 else crop


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        image, caption = self.pairs[index]
        image = Image.open(image).convert("RGB") if isinstance(image, str) else image
        return {"image": image, "caption": caption}


class PairCollator:
    """Augment, process both normalisations, tokenize; stage 2 adds `labels` (caption + EOS, pads -> -100)."""

    def __init__(self, processor, image_size: int, max_length: int, stage: int, augment: bool = True):
        self.processor, self.image_size, self.max_length = processor, image_size, max_length
        self.stage, self.augment = stage, augment

    def __call__(self, examples):
        images = [ex["image"] for ex in examples]
        if self.augment:
            images = [random_resized_crop_and_flip(image, self.image_size) for image in images]
        captions = [ex["caption"] for ex in examples]
        tokenizer = self.processor.tokenizer
        if self.stage == 2 and tokenizer.eos_token and not tokenizer.sep_token:
            captions = [caption + tokenizer.eos_token for caption in captions]
        batch = self.processor(images=images, text=captions, padding="longest", truncation=True,
                               max_length=self.max_length)
        if self.stage == 2:
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return dict(batch)


# -- tiny default models -----------------------------------------------------------------------------------------------


def tiny_word_tokenizer(captions) -> BertTokenizer:
    """A word-level BERT tokenizer over the captions' words, with `[DEC]` (offline stand-in for bert-base)."""
    words = sorted({word for caption in captions for word in caption.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(vocab)})
    add_dec_token(tokenizer)
    return tokenizer


def tiny_config(qformer_vocab: int, llm_vocab: int, image_size: int, dec_id: int, pad_id: int) -> XFormerConfig:
    return XFormerConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=14, initializer_range=0.02),
        mae_config=dict(model_type="vit_mae", hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, image_size=image_size, patch_size=14, decoder_hidden_size=16,
                        decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32),
        qformer_config=dict(vocab_size=qformer_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64, use_qformer_text_input=True),
        text_config=dict(model_type="opt", vocab_size=llm_vocab, hidden_size=32, num_hidden_layers=1, ffn_dim=64,
                         num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=32,
                         pad_token_id=pad_id, bos_token_id=2, eos_token_id=3),
        num_query_tokens=8, image_text_hidden_size=16, dual_mae_num_heads=2, dual_intermediate_size=64,
        itg_bos_token_id=dec_id,
    )


# -- training ----------------------------------------------------------------------------------------------------------


def training_arguments(args, output_dir: str, stage: int) -> TrainingArguments:
    tiny = args.model is None
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs if args.epochs is not None else (9 if stage == 1 else 1),
        max_steps=args.max_steps if args.max_steps is not None else (6 if tiny else -1),
        learning_rate=args.lr if args.lr is not None else (1e-3 if tiny else 1e-4),
        weight_decay=0.05,
        adam_beta2=0.98,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else (0 if tiny else 2000),
        logging_steps=1 if tiny else 50,
        save_strategy="no",
        report_to=[],
        bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        dataloader_num_workers=args.workers,
        disable_tqdm=tiny,
        seed=args.seed,
    )


def train(model, processor, pairs, args, output_dir: str, stage: int):
    collator = PairCollator(processor, args.image_size, args.max_length, stage)
    trainer = Trainer(model=model, args=training_arguments(args, output_dir, stage), train_dataset=PairDataset(pairs),
                      data_collator=collator)
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"stage {stage}: {result.global_step} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return model


def load_stage2(stage1_dir: str, llm: str | None):
    """Stage-1 weights + a frozen LLM (`--llm`), or the LLM already in the stage-1 folder's config."""
    config = XFormerConfig.from_pretrained(stage1_dir)
    if llm is not None:
        config.text_config = AutoConfig.from_pretrained(llm)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the LLM and `language_projection` are expected to be missing from a stage-1 folder
    model = XFormerForConditionalGeneration.from_pretrained(stage1_dir, config=config)
    logging.set_verbosity(verbosity)
    if llm is not None:
        model.language_model.load_state_dict(AutoModelForCausalLM.from_pretrained(llm).state_dict())
        model.freeze()
    return model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["1", "2", "both"], default="both")
    parser.add_argument("--model", help="stage 1: an init checkpoint; stage 2: a stage-1 output (default: tiny random)")
    parser.add_argument("--llm", help="stage 2: the frozen LLM, e.g. facebook/opt-6.7b (default: the config's)")
    parser.add_argument("--tokenizer", default=None, help="stage-1 BERT tokenizer, e.g. bert-base-uncased")
    parser.add_argument("--llm-tokenizer", default=None, help="stage-2 tokenizer (default: --llm)")
    parser.add_argument("--data", help="JSON list of {image, caption} (default: synthetic images)")
    parser.add_argument("--image-folder")
    parser.add_argument("--output-dir", help="default: a temporary folder")
    parser.add_argument("--image-size", type=int, default=None, help="default 224 (56 for the tiny run)")
    parser.add_argument("--batch-size", type=int, default=4, help="per device; BLIP-2 used 1680 in total")
    parser.add_argument("--epochs", type=float, default=None, help="default 9 (stage 1) / 1 (stage 2)")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-4)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="default 2000")
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    tiny = args.model is None
    args.image_size = args.image_size or (56 if tiny else 224)
    if tiny:
        torch.set_num_threads(1)  # tiny models: one thread is fastest, above all on a shared CPU
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    pairs = json_pairs(args.data, args.image_folder) if args.data else synthetic_pairs(args.image_size)
    output_root = Path(args.output_dir or tempfile.mkdtemp(prefix="xformer-"))
    image_processor = build_clip_image_processor(args.image_size)
    if tiny:
        tokenizer = tiny_word_tokenizer([caption for _, caption in pairs])
        dec_id = tokenizer.convert_tokens_to_ids("[DEC]")
        config = tiny_config(len(tokenizer), len(tokenizer), args.image_size, dec_id, tokenizer.pad_token_id)
        stage1_model, llm_tokenizer = XFormerModel(config), tokenizer
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or "bert-base-uncased")
        add_dec_token(tokenizer)
        llm_tokenizer_name = args.llm_tokenizer or args.llm
        llm_tokenizer = AutoTokenizer.from_pretrained(llm_tokenizer_name) if llm_tokenizer_name else None
        stage1_model = XFormerModel.from_pretrained(args.model) if args.stage in ("1", "both") else None

    stage1_dir = args.model
    if args.stage in ("1", "both"):
        stage1_dir = str(output_root / "stage1")
        train(stage1_model, XFormerProcessor(image_processor, tokenizer), pairs, args, stage1_dir, stage=1)
    if args.stage in ("2", "both"):
        if llm_tokenizer is None:
            raise SystemExit("stage 2 needs --llm or --llm-tokenizer")
        llm_tokenizer.padding_side = "right"
        model = load_stage2(stage1_dir, args.llm)
        processor = XFormerProcessor(image_processor, llm_tokenizer)
        train(model, processor, pairs, args, str(output_root / "stage2"), stage=2)
        model.eval()
        sample = processor(images=[pairs[0][0] if not isinstance(pairs[0][0], str) else Image.open(pairs[0][0])])
        generated = model.generate(sample["pixel_values"], mae_pixel_values=sample["mae_pixel_values"],
                                   max_new_tokens=5, num_beams=2)
        caption = llm_tokenizer.decode(generated[0], skip_special_tokens=True)
        print(f"caption for image 0 ({pairs[0][1]!r}): {caption!r}")
    print(f"outputs in {output_root}")


if __name__ == "__main__":
    main()


__all__ = ["synthetic_pairs", "tiny_word_tokenizer", "tiny_config", "PairCollator", "PairDataset", "load_stage2"]
