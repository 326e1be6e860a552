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
"""Croc's three training stages with `transformers.Trainer`.

    stage 1    projector only, LLaVA `plain` captions, square crops          (official: LCS-558K)
    stage 1.5  cross-modal comprehension: prompt-pool replacement, mixed mask,
               reconstruction head; LLM + projector + pool + head train        (official: 1.5M detailed captions)
    stage 2    instruction tuning, pool and head carried unchanged              (official: llava_v1_5_mix665k)

With no arguments, all three stages run on the bundled tiny official-format checkpoint and a few bundled samples
(a couple of minutes on a CPU). A real run, one stage at a time (the vision tower is always frozen):

    torchrun --nproc_per_node 8 examples/pretrain_croc.py --stage 1.5 --model croc-stage1 \\
        --data croc_mix1.5m.json --image-folder images/ --output-dir croc-stage1.5 \\
        --deepspeed examples/ds_zero3.json --bf16

Defaults are the official scripts' (learning rates, per-device batch x accumulation for 8 GPUs, warmup ratio 0.03,
cosine schedule, weight decay 0, max length); the projector always gets `--projector-lr` (1.5e-4), which is what
the official trainer applies in every stage, overriding the scripts' stage-1 learning rate of 1e-3. The comprehension
settings default to the paper (Hungarian matching, visual attention scope, replaced-token reconstruction); pass
`--official-objective` to train exactly as the official code does. Multi-GPU and multi-node runs go through
`torchrun` or `accelerate launch` with the DeepSpeed ZeRO-2/3 configs shipped beside this script.
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from bundled import BUNDLED_CONVERSATIONS, BUNDLED_IMAGES, convert_bundled_checkpoint
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainingArguments

import modeling_croc  # noqa: F401  (registers Croc with the Auto classes)
from modeling_croc.data_croc import CrocDataCollator, LlavaConversationDataset
from modeling_croc.training_croc import STAGES, CrocTrainer, configure_stage

EXAMPLES = Path(__file__).resolve().parent
OFFICIAL_OBJECTIVE = {"pool_matching": "nearest", "attention_scope": "prefix", "reconstruction_targets": "all"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["1", "1.5", "2", "all"], default="all",
                        help="stage to run; 'all' chains 1 -> 1.5 -> 2, each starting from the previous output")
    parser.add_argument("--model", help="converted Croc/LLaVA folder or Hub id to start from (default: bundled tiny)")
    parser.add_argument("--data", help="LLaVA-format JSON (default: bundled samples)")
    parser.add_argument("--image-folder", help="folder the JSON's image paths are relative to")
    parser.add_argument("--output-dir", help="where checkpoints go (default: a temporary folder)")
    parser.add_argument("--learning-rate", type=float, help="base learning rate (default: the stage's official one)")
    parser.add_argument("--projector-lr", type=float, help="projector learning rate (default: official 1.5e-4)")
    parser.add_argument("--per-device-batch-size", type=int, help="default: the stage's official value")
    parser.add_argument("--gradient-accumulation-steps", type=int, help="default: the stage's official value")
    parser.add_argument("--max-length", type=int, help="max sequence length after image expansion")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs per stage (official: 1)")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop each stage after this many steps")
    parser.add_argument("--deepspeed", help="DeepSpeed config (examples/ds_zero2.json, examples/ds_zero3.json)")
    parser.add_argument("--bf16", action="store_true", help="train in bfloat16 mixed precision (official)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute activations (official)")
    parser.add_argument("--official-objective", action="store_true",
                        help="nearest matching, prefix attention scope, reconstruct all image tokens (official code)")
    parser.add_argument("--logging-steps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    args.tiny_defaults = args.model is None and args.data is None
    return args


def stage_order(stage: str) -> list[str]:
    return ["1", "1.5", "2"] if stage == "all" else [stage]


def plain_samples(samples: list[dict]) -> list[dict]:
    """Stage 1's `plain` format takes one image and one caption per sample."""
    return [s for s in samples if s.get("image") and len(s["conversations"]) == 2 and "<image>" in s["conversations"][0]["value"]]


def load_dataset(args, stage) -> LlavaConversationDataset:
    path = args.data or BUNDLED_CONVERSATIONS
    image_folder = args.image_folder or (BUNDLED_IMAGES if args.data is None else None)
    with open(path, encoding="utf-8") as file:
        samples = json.load(file)
    if stage.conversation_format == "plain":
        samples = plain_samples(samples)
    return LlavaConversationDataset(samples, image_folder=image_folder)


def training_arguments(args, stage, output_dir) -> TrainingArguments:
    tiny = args.tiny_defaults
    return TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=args.learning_rate or stage.learning_rate,
        per_device_train_batch_size=args.per_device_batch_size or (2 if tiny else stage.per_device_batch_size),
        gradient_accumulation_steps=args.gradient_accumulation_steps or (1 if tiny else stage.gradient_accumulation_steps),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps > 0 else (3 if tiny else -1),
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0 if stage.name == "1" else 0.0,
        bf16=args.bf16,
        activation_checkpointing=args.activation_checkpointing,
        deepspeed=args.deepspeed,
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available() and args.deepspeed is None,
        seed=args.seed,
    )


def run_stage(args, stage_name: str, model_path, output_dir: Path) -> Path:
    """Train one stage from `model_path`; save the full model and processor to `output_dir`; return it."""
    stage = STAGES[stage_name]
    # Stage 1.5 starts the pool and head (fresh when the checkpoint has none, as officially); stage 2 carries them.
    model = AutoModelForImageTextToText.from_pretrained(model_path, comprehension_modules=stage_name != "1")
    processor = AutoProcessor.from_pretrained(model_path)
    if args.official_objective:
        for field, value in OFFICIAL_OBJECTIVE.items():
            setattr(model.config, field, value)
    configure_stage(model, stage)
    collator = CrocDataCollator(
        processor,
        max_length=args.max_length or stage.model_max_length,
        image_aspect_ratio=stage.image_aspect_ratio,
        conversation_format="plain" if stage.conversation_format == "plain" else "v1",
    )
    trainer = CrocTrainer(
        model=model,
        args=training_arguments(args, stage, output_dir),
        train_dataset=load_dataset(args, stage),
        data_collator=collator,
        projector_learning_rate=args.projector_lr or stage.projector_learning_rate,
    )
    trainer.train()
    model.config.croc_stage = False  # a saved checkpoint loads for inference; the next stage sets its own
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(output_dir))
    return output_dir


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        root = Path(args.output_dir or workdir)
        model_path = args.model or convert_bundled_checkpoint(Path(workdir) / "croc-tiny-hf")
        for stage_name in stage_order(args.stage):
            model_path = run_stage(args, stage_name, model_path, root / f"stage{stage_name}")
        if args.output_dir:
            print(f"final checkpoint: {model_path}")


if __name__ == "__main__":
    main()
