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
"""Assemble an X-Former starting checkpoint from public parts (no official X-Former weights exist).

Sources (local folders or Hub ids):

| X-Former parameters | source | rule |
| --- | --- | --- |
| `vision_model.*` | BLIP-2 checkpoint (`--blip2`, e.g. Salesforce/blip2-opt-2.7b) `vision_model.*` | identical |
| `mae_encoder.*`, `mae_decoder.*` | ViTMAEForPreTraining (`--mae`, facebook/vit-mae-huge) `vit.*`, `decoder.*` | prefix |
| `embeddings.{word,position}_embeddings` | BERT (`--bert`, bert-base-uncased) `bert.embeddings.*` | word rows + 1 for `[DEC]` (mean row) |
| `qformer.layernorm` | `bert.embeddings.LayerNorm` | |
| `qformer.encoder.layer.{i}.attention.attention.{query,key,value}` | `bert.encoder.layer.{i}.attention.self.*` | |
| `qformer.encoder.layer.{i}.attention.output.*` | `bert.encoder.layer.{i}.attention.output.*` | |
| `qformer.encoder.layer.{i}.{intermediate,output}` and `{intermediate,output}_query` | `bert.encoder.layer.{i}.{intermediate,output}` | text FFN copied to the query FFN (BLIP-2) |
| `lm_head.{dense,LayerNorm}`, `lm_head.bias` | `cls.predictions.transform.*`, `cls.predictions.bias` | bias + 1 zero for `[DEC]`; decoder tied |
| `qformer.*`, `embeddings.*`, `query_tokens`, `vision_projection`, `text_projection`, `itm_head` | with `--qformer-from-blip2` (Salesforce/blip2-itm-vit-g): the same names | replaces the BERT rows above |
| `language_model.*` | OPT (`--opt`, facebook/opt-2.7b) | prefix; only for a stage-2 checkpoint |
| new: `query_tokens`, `vision_projection`, `text_projection`, `itm_head`, `temp`, `dual_cross_attention.*`, even-layer `crossattention`, `language_projection` | random (BERT init N(0, .02), `temp` 0.07) | |

Dropped on purpose: BERT `token_type_embeddings`, `pooler`, `cls.predictions.decoder.*` (tied); the BLIP-2 Q-Former,
projection and LLM when the vision tower is all we take from it. Any other source key, any X-Former key neither
mapped nor listed as new, and any shape mismatch stop the script with a one-line error and exit status 1.
The output folder also gets an `XFormerProcessor` (the BERT tokenizer with `[DEC]` for stage 1, the LLM's for
stage 2) when the source folder has tokenizer files, and `conversion_report.json` (sourced / new keys).

Example:

    python conversion/convert_xformer_init.py --blip2 Salesforce/blip2-opt-2.7b --mae facebook/vit-mae-huge \
        --bert bert-base-uncased --output xformer-stage1-init
    python conversion/convert_xformer_init.py ... --opt facebook/opt-2.7b --output xformer-stage2-init
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

import torch


try:
    import modeling_croc  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class ConversionError(Exception):
    """A problem the user can fix; printed as one line."""


# (source regex, target template(s)) per source; `None` = dropped on purpose.
BLIP2_VISION_RULES = [
    (r"^vision_model\.(.+)$", [r"vision_model.\1"]),
    (r"^(qformer|language_model|language_projection|embeddings|vision_projection|text_projection|itm_head)\.", None),
    (r"^query_tokens$", None),
]
BLIP2_QFORMER_RULES = [
    (r"^(qformer|embeddings)\.(.+)$", [r"\1.\2"]),
    (r"^(query_tokens)$", [r"\1"]),
    (r"^(vision_projection|text_projection|itm_head)\.(weight|bias)$", [r"\1.\2"]),
    (r"^(vision_model|language_model|language_projection)\.", None),
]
MAE_RULES = [
    (r"^vit\.(.+)$", [r"mae_encoder.\1"]),
    (r"^decoder\.(.+)$", [r"mae_decoder.\1"]),
]
_LAYER = r"^bert\.encoder\.layer\.(\d+)\."
BERT_QFORMER_RULES = [
    (r"^bert\.embeddings\.(word|position)_embeddings\.weight$", [r"embeddings.\1_embeddings.weight"]),
    (r"^bert\.embeddings\.LayerNorm\.(weight|bias)$", [r"qformer.layernorm.\1"]),
    (
        _LAYER + r"attention\.self\.(query|key|value)\.(weight|bias)$",
        [r"qformer.encoder.layer.\1.attention.attention.\2.\3"],
    ),
    (
        _LAYER + r"attention\.output\.(dense|LayerNorm)\.(weight|bias)$",
        [r"qformer.encoder.layer.\1.attention.output.\2.\3"],
    ),
    (
        _LAYER + r"intermediate\.dense\.(weight|bias)$",
        [r"qformer.encoder.layer.\1.intermediate.dense.\2", r"qformer.encoder.layer.\1.intermediate_query.dense.\2"],
    ),
    (
        _LAYER + r"output\.(dense|LayerNorm)\.(weight|bias)$",
        [r"qformer.encoder.layer.\1.output.\2.\3", r"qformer.encoder.layer.\1.output_query.\2.\3"],
    ),
    (r"^bert\.embeddings\.token_type_embeddings\.weight$", None),
    (r"^bert\.pooler\.", None),
]
BERT_HEAD_RULES = [
    (r"^cls\.predictions\.transform\.(dense|LayerNorm)\.(weight|bias)$", [r"lm_head.\1.\2"]),
    (r"^cls\.predictions\.bias$", [r"lm_head.bias"]),
    (r"^cls\.predictions\.decoder\.(weight|bias)$", None),  # tied to the word embeddings / same as the bias
]
BERT_ONLY_HEAD_RULES = [(r"^bert\.", None)] + BERT_HEAD_RULES  # with --qformer-from-blip2
OPT_RULES = [(r"^(.+)$", [r"language_model.\1"])]

NEW_KEYS = [
    r"^query_tokens$",
    r"^vision_projection\.",
    r"^text_projection\.",
    r"^itm_head\.",
    r"^temp$",
    r"^dual_cross_attention\.",
    r"^qformer\.encoder\.layer\.\d+\.crossattention\.",
    r"^language_projection\.",
]
TIED_KEYS = [r"^lm_head\.decoder\.weight$", r"^language_model\.lm_head\.weight$"]
# Stage 2 feeds no text to the Q-Former and does not reconstruct: these sourced tensors have no place there.
STAGE1_ONLY_KEYS = [
    r"^embeddings\.",
    r"^lm_head\.",
    r"^vision_projection\.",
    r"^text_projection\.",
    r"^itm_head\.",
    r"^mae_decoder\.",
    r"^qformer\.encoder\.layer\.\d+\.(intermediate|output)\.",
]


def map_state_dict(source: dict, rules: list, source_name: str) -> dict:
    """Apply `rules` to every key of `source`; an unmatched key is an error."""
    mapped = {}
    for key, tensor in source.items():
        for pattern, targets in rules:
            if re.match(pattern, key):
                for index, target in enumerate(targets or []):  # a copy per extra target: no shared storage
                    mapped[re.sub(pattern, target, key)] = tensor if index == 0 else tensor.clone()
                break
        else:
            raise ConversionError(f"cannot place {source_name} key '{key}' in X-Former")
    return mapped


def local_dir(path_or_id: str) -> Path:
    if os.path.isdir(path_or_id):
        return Path(path_or_id)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path_or_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))


def read_safetensors_with_prefixes(folder: Path, prefixes: tuple) -> dict:
    """Only the tensors under `prefixes` (a BLIP-2 file also holds a multi-GB LLM we do not need)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"no *.safetensors file in {folder}")
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(prefixes):
                    tensors[key] = handle.get_tensor(key)
    return tensors


def bert_qformer_config(bert_config, vision_hidden: int) -> dict:
    return dict(
        vocab_size=bert_config.vocab_size + 1,  # + [DEC]
        hidden_size=bert_config.hidden_size,
        num_hidden_layers=bert_config.num_hidden_layers,
        num_attention_heads=bert_config.num_attention_heads,
        intermediate_size=bert_config.intermediate_size,
        hidden_act=bert_config.hidden_act,
        hidden_dropout_prob=bert_config.hidden_dropout_prob,
        attention_probs_dropout_prob=bert_config.attention_probs_dropout_prob,
        max_position_embeddings=bert_config.max_position_embeddings,
        layer_norm_eps=bert_config.layer_norm_eps,
        pad_token_id=bert_config.pad_token_id,
        cross_attention_frequency=2,
        encoder_hidden_size=vision_hidden,
        use_qformer_text_input=True,
    )


def add_dec_rows(weights: dict) -> dict:
    """Grow the BERT vocabulary by `[DEC]`: word-embedding row = mean of the others, MLM bias entry = 0."""
    word = weights["embeddings.word_embeddings.weight"]
    weights["embeddings.word_embeddings.weight"] = torch.cat([word, word.mean(dim=0, keepdim=True)])
    if "lm_head.bias" in weights:
        weights["lm_head.bias"] = torch.cat([weights["lm_head.bias"], weights["lm_head.bias"].new_zeros(1)])
    return weights


def build_config(args, blip2_dir, mae_dir, bert_dir, qformer_dir, opt_dir):
    from transformers import AutoConfig, BertConfig, Blip2Config, ViTMAEConfig

    from modeling_croc import XFormerConfig

    vision_config = Blip2Config.from_pretrained(blip2_dir).vision_config
    mae_config = ViTMAEConfig.from_pretrained(mae_dir)
    bert_config = BertConfig.from_pretrained(bert_dir)
    settings = dict(num_query_tokens=args.num_query_tokens, itg_bos_token_id=bert_config.vocab_size)
    if qformer_dir is not None:
        qformer_source = Blip2Config.from_pretrained(qformer_dir)
        qformer_config = qformer_source.qformer_config.to_dict()
        if not qformer_config.get("use_qformer_text_input"):
            raise ConversionError(
                f"{args.qformer_from_blip2} has no text FFNs: use an ITM checkpoint (blip2-itm-vit-g)"
            )
        settings.update(
            num_query_tokens=qformer_source.num_query_tokens,
            image_text_hidden_size=qformer_source.image_text_hidden_size,
        )
    else:
        qformer_config = bert_qformer_config(bert_config, vision_config.hidden_size)
    mae_heads = args.dual_mae_num_heads or mae_config.num_attention_heads
    text_config = AutoConfig.from_pretrained(opt_dir).to_dict() if opt_dir is not None else None
    return XFormerConfig(
        vision_config=vision_config.to_dict(),
        mae_config=mae_config.to_dict(),
        qformer_config=qformer_config,
        text_config=text_config,
        dual_mae_num_heads=mae_heads,
        dual_intermediate_size=qformer_config["intermediate_size"],
        **settings,
    )


def gather_weights(args, blip2_dir, mae_dir, bert_dir, qformer_dir, opt_dir) -> dict:
    from transformers import BertForMaskedLM, OPTForCausalLM, ViTMAEForPreTraining

    weights = {}
    vision = read_safetensors_with_prefixes(blip2_dir, ("vision_model.",))
    if not vision:
        raise ConversionError(f"{args.blip2} has no 'vision_model.*' tensors (not a BLIP-2 checkpoint)")
    weights.update(map_state_dict(vision, BLIP2_VISION_RULES, "BLIP-2"))
    weights.update(map_state_dict(ViTMAEForPreTraining.from_pretrained(mae_dir).state_dict(), MAE_RULES, "MAE"))
    bert = BertForMaskedLM.from_pretrained(bert_dir).state_dict()
    if qformer_dir is None:
        weights.update(map_state_dict(bert, BERT_QFORMER_RULES + BERT_HEAD_RULES, "BERT"))
        weights = add_dec_rows(weights)
    else:
        head = map_state_dict(bert, BERT_ONLY_HEAD_RULES, "BERT")
        head["lm_head.bias"] = torch.cat([head["lm_head.bias"], head["lm_head.bias"].new_zeros(1)])
        prefixes = ("qformer.", "embeddings.", "query_tokens", "vision_projection.", "text_projection.", "itm_head.")
        qformer = read_safetensors_with_prefixes(qformer_dir, prefixes)
        qformer = {k: v for k, v in qformer.items() if not k.endswith("position_ids")}
        weights.update(map_state_dict(qformer, BLIP2_QFORMER_RULES, "BLIP-2 Q-Former"))
        weights.update(head)
    if opt_dir is not None:
        weights.update(map_state_dict(OPTForCausalLM.from_pretrained(opt_dir).state_dict(), OPT_RULES, "OPT"))
    return weights


def check_coverage(model_state: dict, weights: dict):
    """Every source tensor lands on an X-Former tensor of the same shape; every X-Former tensor is sourced or new."""
    for key, tensor in weights.items():
        if key not in model_state:
            raise ConversionError(f"mapped key '{key}' does not exist in X-Former")
        if tuple(tensor.shape) != tuple(model_state[key].shape):
            raise ConversionError(
                f"shape mismatch for '{key}': source {tuple(tensor.shape)}, X-Former {tuple(model_state[key].shape)}"
            )
    allowed_missing = [re.compile(pattern) for pattern in NEW_KEYS + TIED_KEYS]
    for key in model_state:
        if key not in weights and not any(pattern.match(key) for pattern in allowed_missing):
            raise ConversionError(f"no source for X-Former key '{key}'")


def materialize(model, weights: dict):
    """Meta model -> CPU: sourced tensors are assigned (no copy), only the new parameters are initialised."""
    model.to_empty(device="cpu")
    result = model.load_state_dict(weights, strict=False, assign=True)
    if result.unexpected_keys:
        raise ConversionError(f"unexpected keys: {result.unexpected_keys[:5]}")
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if name in weights:
            tensor._is_hf_initialized = True  # `transformers.initialization` skips these
    model.initialize_weights()
    model.tie_weights()
    model.freeze()
    return model


def save_processor(config, tokenizer_dir: Path, output: Path) -> str | None:
    """An XFormerProcessor beside the weights: BERT tokenizer + [DEC] (stage 1) or the LLM's (stage 2), CLIP-stat
    image processor at the vision resolution. Skipped (None) when the source folder has no tokenizer."""
    from transformers import AutoTokenizer

    from modeling_croc import XFormerProcessor
    from modeling_croc.processing_xformer import add_dec_token, build_clip_image_processor

    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
    if not any((tokenizer_dir / name).exists() for name in tokenizer_files):
        return None
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if config.text_config is None:
        dec_id = add_dec_token(tokenizer)
        if dec_id != config.itg_bos_token_id or len(tokenizer) != config.qformer_config.vocab_size:
            raise ConversionError(f"tokenizer in {tokenizer_dir} does not match the Q-Former vocabulary")
    image_size = config.vision_config.image_size
    image_size = image_size if isinstance(image_size, int) else image_size[0]
    processor = XFormerProcessor(build_clip_image_processor(image_size), tokenizer)
    processor.save_pretrained(output)
    return type(tokenizer).__name__


def convert(args) -> Path:
    from modeling_croc import XFormerForConditionalGeneration, XFormerModel

    blip2_dir, mae_dir, bert_dir = local_dir(args.blip2), local_dir(args.mae), local_dir(args.bert)
    qformer_dir = local_dir(args.qformer_from_blip2) if args.qformer_from_blip2 else None
    opt_dir = local_dir(args.opt) if args.opt else None
    config = build_config(args, blip2_dir, mae_dir, bert_dir, qformer_dir, opt_dir)
    weights = gather_weights(args, blip2_dir, mae_dir, bert_dir, qformer_dir, opt_dir)
    torch.manual_seed(args.seed)
    model_class = XFormerForConditionalGeneration if opt_dir is not None else XFormerModel
    with torch.device("meta"):  # no random init of the billions of parameters the sources overwrite
        model = model_class(config)
    model_state = model.state_dict()
    if model_class is XFormerForConditionalGeneration:
        weights = {k: v for k, v in weights.items() if not any(re.match(p, k) for p in STAGE1_ONLY_KEYS)}
    check_coverage(model_state, weights)
    model = materialize(model, weights)
    output = Path(args.output)
    model.save_pretrained(output)
    processor = save_processor(config, bert_dir if opt_dir is None else opt_dir, output)
    report = {
        "class": model_class.__name__,
        "sourced": len(weights),
        "new": sorted(key for key in model_state if key not in weights),
        "processor": processor,
    }
    (output / "conversion_report.json").write_text(json.dumps(report, indent=2))
    return output


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blip2", default="Salesforce/blip2-opt-2.7b", help="BLIP-2 checkpoint for the EVA ViT-g")
    parser.add_argument("--mae", default="facebook/vit-mae-huge", help="ViTMAEForPreTraining with its decoder")
    parser.add_argument("--bert", default="bert-base-uncased", help="BERT MLM: Q-Former init and the ITG head")
    parser.add_argument("--qformer-from-blip2", default=None, help="take the Q-Former from a BLIP-2 ITM checkpoint")
    parser.add_argument("--opt", default=None, help="OPT causal LM: write a stage-2 checkpoint")
    parser.add_argument("--num-query-tokens", type=int, default=32)
    parser.add_argument("--dual-mae-num-heads", type=int, default=None, help="default: the MAE's head count")
    parser.add_argument("--seed", type=int, default=0, help="seed of the randomly initialised new parts")
    parser.add_argument("--output", required=True)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from transformers.utils import logging

    args = parse_args(argv)
    logging.disable_progress_bar()
    try:
        output = convert(args)
    except Exception as error:  # one line, no traceback
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"convert_xformer_init: error: {message}", file=sys.stderr)
        return 1
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
