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
"""Fine-tune Croc with LoRA on LLaVA-format conversations under `transformers.Trainer`, then save or push the adapter.

Examples:

    # the embedded tiny model and bundled samples (CPU, well under a minute)
    python examples/finetune_lora.py

    # a real model on your data, adapter pushed to the Hub with a model card
    python examples/finetune_lora.py --model USER/croc-7b-hf --data train.json --image-folder images/ \
        --output-dir croc-7b-lora --epochs 1 --batch-size 4 --gradient-accumulation 4 --bf16 \
        --activation-checkpointing --push-to-hub USER/croc-7b-my-lora

    # QLoRA (4-bit base; needs bitsandbytes and a CUDA GPU)
    python examples/finetune_lora.py --model USER/croc-7b-hf --data train.json --image-folder images/ --qlora

The data is a JSON list of `{"id", "image", "conversations": [{"from": "human" | "gpt", "value": ...}]}` samples,
read by `modeling_croc.data_croc.LlavaConversationDataset` and batched by `CrocDataCollator` (vicuna_v1 template,
answers supervised), exactly as in the pretraining recipe.
"""

import argparse
import logging
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run from a source checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments  # noqa: E402

from modeling_croc.data_croc import CrocDataCollator, LlavaConversationDataset  # noqa: E402
from modeling_croc.hub_croc import looks_like_repo_id, push_adapter_to_hub, write_adapter_card  # noqa: E402
from modeling_croc.peft_croc import (  # noqa: E402
    croc_lora_config,
    prepare_lora_model,
    qlora_available,
    qlora_quantization_config,
)

TINY_OFFICIAL = REPO_ROOT / "tests" / "fixtures" / "croc-tiny-official"
BUNDLED_DATA = REPO_ROOT / "tests" / "fixtures" / "lora_conversations.json"
BUNDLED_IMAGES = REPO_ROOT / "tests" / "fixtures" / "lora_images"

logger = logging.getLogger("finetune_lora")


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options; every default is shown by `--help`.

    Args:
        argv (`list[str]`, *optional*): arguments to parse (default: `sys.argv[1:]`).
    """
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default=None,
                        help="converted Croc model (folder or Hub id); default: the embedded tiny model, converted "
                             "from the official tiny checkpoint into a temporary folder")
    parser.add_argument("--data", default=str(BUNDLED_DATA), help="LLaVA-format JSON of conversations")
    parser.add_argument("--image-folder", default=None,
                        help="folder the samples' image paths are relative to (default: the bundled images for the "
                             "bundled data, else the JSON file's folder)")
    parser.add_argument("--output-dir", default="croc-lora", help="where checkpoints and the adapter are written")
    parser.add_argument("--eval-fraction", type=float, default=0.25, help="share of samples held out for evaluation")
    parser.add_argument("--epochs", type=float, default=1.0, help="training epochs")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (-1: epochs)")
    parser.add_argument("--batch-size", type=int, default=2, help="per-device batch size")
    parser.add_argument("--gradient-accumulation", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--learning-rate", type=float, default=2e-4, help="peak learning rate (LoRA and projector)")
    parser.add_argument("--warmup-steps", type=float, default=0.03,
                        help="warm-up steps (a float below 1 is a fraction of the run)")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    parser.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (scale = alpha / r)")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the LoRA inputs")
    parser.add_argument("--no-train-projector", action="store_true",
                        help="keep the multi-modal projector frozen (by default it is fully trained and saved)")
    parser.add_argument("--max-length", type=int, default=2048,
                        help="longest tokenised sample, image tokens included (text after the image is truncated)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="trade compute for memory")
    parser.add_argument("--bf16", action="store_true", help="train in bfloat16 mixed precision (GPU)")
    parser.add_argument("--qlora", action="store_true",
                        help="load the base model in 4-bit NF4 and train LoRA on top (bitsandbytes + CUDA GPU)")
    parser.add_argument("--logging-steps", type=int, default=10, help="log the training loss every N steps")
    parser.add_argument("--save-steps", type=int, default=0,
                        help="write a resumable Trainer checkpoint every N steps (0: only the final adapter)")
    parser.add_argument("--resume-from-checkpoint", default=None, help="a checkpoint folder to resume from")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, LoRA init and data order")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None,
                        help="upload the adapter with a generated model card to this Hub repository")
    parser.add_argument("--base-model-id", default=None,
                        help="Hub id of the base model for the card and adapter_config.json (default: --model when "
                             "it is a Hub id)")
    args = parser.parse_args(argv)
    if args.qlora and not qlora_available():
        parser.error("--qlora needs the bitsandbytes package and a CUDA GPU")
    if not 0.0 < args.eval_fraction < 1.0:
        parser.error("--eval-fraction must be between 0 and 1")
    return args


def convert_tiny_model(folder: Path) -> Path:
    """Convert the official tiny Croc checkpoint bundled with the tests into `folder` and return the model path.

    Args:
        folder (`Path`): an empty temporary folder.
    """
    from conversion.convert_croc_to_hf import convert_croc_checkpoint

    return convert_croc_checkpoint(
        checkpoint=TINY_OFFICIAL / "croc",
        vision_tower=TINY_OFFICIAL / "clip",
        tokenizer=TINY_OFFICIAL / "tokenizer",
        output=folder / "croc-tiny",
        verify=False,
    )


def split_dataset(dataset, eval_fraction: float, seed: int):
    """Seeded random train / held-out split (at least one sample on each side).

    Args:
        dataset: the full `LlavaConversationDataset`.
        eval_fraction (`float`): share of samples held out.
        seed (`int`): permutation seed.
    """
    if len(dataset) < 2:
        raise ValueError("Need at least two samples to hold one out for evaluation.")
    num_eval = min(max(1, round(len(dataset) * eval_fraction)), len(dataset) - 1)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return torch.utils.data.Subset(dataset, order[num_eval:]), torch.utils.data.Subset(dataset, order[:num_eval])


def load_model(model_path, qlora: bool, bf16: bool):
    """The Croc base model: full precision, bfloat16, or 4-bit for QLoRA.

    Args:
        model_path: folder or Hub id of a converted Croc model.
        qlora (`bool`): load the language model in 4-bit NF4.
        bf16 (`bool`): load the weights in bfloat16.
    """
    if qlora:
        return AutoModelForImageTextToText.from_pretrained(
            model_path, quantization_config=qlora_quantization_config(), device_map={"": 0}, dtype=torch.bfloat16
        )
    return AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.bfloat16 if bf16 else torch.float32)


def training_arguments(args) -> TrainingArguments:
    """Trainer settings from the command line (checkpoints only with `--save-steps`; no external loggers).

    Args:
        args (`argparse.Namespace`): parsed options.
    """
    return TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type="cosine",
        weight_decay=0.0,
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps > 0 else "no",
        save_steps=max(args.save_steps, 1),
        eval_strategy="no",
        bf16=args.bf16 or args.qlora,
        activation_checkpointing=args.activation_checkpointing,
        remove_unused_columns=False,  # the collator needs the raw "conversations" and "image" fields
        dataloader_num_workers=0,
        report_to=[],
        seed=args.seed,
    )


def card_notes(args, num_train: int, metrics: dict) -> str:
    """Markdown about the run for the adapter's model card.

    Args:
        args (`argparse.Namespace`): parsed options.
        num_train (`int`): training samples.
        metrics (`dict`): evaluation metrics (`eval_loss`, ...).
    """
    lines = [
        f"- data: `{Path(args.data).name}`, {num_train} training conversations",
        f"- LoRA: r={args.lora_r}, alpha={args.lora_alpha}, dropout={args.lora_dropout}, projector "
        + ("frozen" if args.no_train_projector else "fully trained"),
        f"- {args.epochs:g} epoch(s), batch {args.batch_size} x {args.gradient_accumulation}, "
        f"learning rate {args.learning_rate:g}" + (", QLoRA (4-bit NF4 base)" if args.qlora else ""),
    ]
    if "eval_loss" in metrics:
        lines.append(f"- held-out loss: {metrics['eval_loss']:.4f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Run the fine-tuning; returns the held-out evaluation metrics.

    Args:
        argv (`list[str]`, *optional*): command-line arguments (default: `sys.argv[1:]`).
    """
    args = parse_args(argv)
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    with ExitStack() as stack:
        model_path = args.model
        if model_path is None:
            model_path = convert_tiny_model(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        base_model_id = args.base_model_id or (args.model if looks_like_repo_id(args.model) else None)

        processor = AutoProcessor.from_pretrained(model_path)
        model = load_model(model_path, args.qlora, args.bf16)
        image_folder = args.image_folder
        if image_folder is None:
            bundled = Path(args.data).resolve() == BUNDLED_DATA
            image_folder = BUNDLED_IMAGES if bundled else Path(args.data).resolve().parent
        train_set, eval_set = split_dataset(LlavaConversationDataset(args.data, image_folder), args.eval_fraction,
                                            args.seed)

        torch.manual_seed(args.seed)
        lora_config = croc_lora_config(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                       train_projector=not args.no_train_projector)
        model = prepare_lora_model(model, lora_config, args.activation_checkpointing, quantized=args.qlora)
        trainer = Trainer(
            model=model,
            args=training_arguments(args),
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=CrocDataCollator(processor, max_length=args.max_length),
            processing_class=processor,
        )
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        metrics = trainer.evaluate()
        trainer.save_metrics("eval", metrics)

        if base_model_id is not None:
            model.peft_config["default"].base_model_name_or_path = base_model_id
        model.save_pretrained(args.output_dir)
        notes = card_notes(args, len(train_set), metrics)
        write_adapter_card(args.output_dir, base_model_id, args.push_to_hub, notes)
        logger.info(f"adapter saved to {Path(args.output_dir).resolve()}")
        if args.push_to_hub:
            push_adapter_to_hub(model, args.push_to_hub, base_model=base_model_id, notes=notes)
            logger.info(f"adapter pushed to https://huggingface.co/{args.push_to_hub}")
    return metrics


if __name__ == "__main__":
    main()


__all__ = ["main", "parse_args", "split_dataset", "convert_tiny_model"]
