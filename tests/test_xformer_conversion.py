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
"""`conversion/convert_xformer_init.py` on tiny local stand-ins of BLIP-2, MAE, BERT and OPT (no network)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_xformer_helpers import (
    single_thread,  # noqa: F401  (autouse through pytestmark)
    tiny_mae_config,
    tiny_qformer_config,
    tiny_text_config,
    tiny_vision_config,
)
from transformers import (
    AutoProcessor,
    BertConfig,
    BertForMaskedLM,
    BertTokenizer,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    OPTConfig,
    OPTForCausalLM,
    ViTMAEConfig,
    ViTMAEForPreTraining,
)

from modeling_croc import XFormerForConditionalGeneration, XFormerModel


pytestmark = pytest.mark.usefixtures("single_thread")
SCRIPT = Path(__file__).resolve().parent.parent / "conversion" / "convert_xformer_init.py"
BERT_VOCAB = 99


def load_script():
    spec = importlib.util.spec_from_file_location("convert_xformer_init", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Tiny public-part stand-ins saved with save_pretrained, as the Hub folders would be."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    blip2_config = Blip2Config(vision_config=tiny_vision_config(), qformer_config=tiny_qformer_config(),
                               text_config=tiny_text_config(), num_query_tokens=4, image_text_hidden_size=16)
    Blip2ForConditionalGeneration(blip2_config).save_pretrained(root / "blip2")
    Blip2ForImageTextRetrieval(blip2_config).save_pretrained(root / "blip2-itm")
    mae = {k: v for k, v in tiny_mae_config().items() if k != "model_type"}
    ViTMAEForPreTraining(ViTMAEConfig(**mae)).save_pretrained(root / "mae")
    bert = BertConfig(vocab_size=BERT_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64)
    BertForMaskedLM(bert).save_pretrained(root / "bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{index}" for index in range(BERT_VOCAB - 5)]
    BertTokenizer(vocab={word: index for index, word in enumerate(words)}).save_pretrained(root / "bert")
    OPTForCausalLM(OPTConfig(**{k: v for k, v in tiny_text_config().items() if k != "model_type"})).save_pretrained(
        root / "opt"
    )
    return root


def run(parts, output, *extra):
    args = ["--blip2", str(parts / "blip2"), "--mae", str(parts / "mae"), "--bert", str(parts / "bert"),
            "--num-query-tokens", "4", "--dual-mae-num-heads", "2", "--output", str(output), *extra]
    assert load_script().main(args) == 0


def test_stage1_from_bert_places_every_part(parts, tmp_path):
    run(parts, tmp_path / "out")
    model = XFormerModel.from_pretrained(tmp_path / "out")
    blip2 = Blip2ForConditionalGeneration.from_pretrained(parts / "blip2")
    mae = ViTMAEForPreTraining.from_pretrained(parts / "mae")
    bert = BertForMaskedLM.from_pretrained(parts / "bert")
    for key, value in blip2.vision_model.state_dict().items():
        assert torch.equal(model.vision_model.state_dict()[key], value), key
    for key, value in mae.vit.state_dict().items():
        assert torch.equal(model.mae_encoder.state_dict()[key], value), key
    for key, value in mae.decoder.state_dict().items():
        assert torch.equal(model.mae_decoder.state_dict()[key], value), key
    layer, bert_layer = model.qformer.encoder.layer[1], bert.bert.encoder.layer[1]
    assert torch.equal(layer.attention.attention.key.weight, bert_layer.attention.self.key.weight)
    assert torch.equal(layer.intermediate.dense.weight, bert_layer.intermediate.dense.weight)
    assert torch.equal(layer.intermediate_query.dense.weight, bert_layer.intermediate.dense.weight)  # copied
    assert torch.equal(layer.output_query.LayerNorm.bias, bert_layer.output.LayerNorm.bias)
    assert torch.equal(model.qformer.layernorm.weight, bert.bert.embeddings.LayerNorm.weight)
    words = model.embeddings.word_embeddings.weight
    assert words.shape[0] == BERT_VOCAB + 1 and model.config.itg_bos_token_id == BERT_VOCAB  # [DEC] appended
    assert torch.equal(words[:BERT_VOCAB], bert.bert.embeddings.word_embeddings.weight)
    torch.testing.assert_close(words[BERT_VOCAB], bert.bert.embeddings.word_embeddings.weight.mean(0))
    assert torch.equal(model.lm_head.dense.weight, bert.cls.predictions.transform.dense.weight)
    assert model.lm_head.decoder.weight.data_ptr() == words.data_ptr()
    assert torch.equal(model.lm_head.bias[:BERT_VOCAB], bert.cls.predictions.bias) and model.lm_head.bias[-1] == 0
    report = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    # the new parts are initialised (the model is built on meta, only they get an init): BERT-style values
    assert all(torch.isfinite(tensor).all() for tensor in model.state_dict().values())
    assert model.temp.item() == pytest.approx(0.07)
    dual_step = model.dual_cross_attention.layers[0].mae_from_queries
    assert torch.equal(dual_step.crossattention.output.LayerNorm.weight, torch.ones(48))
    assert torch.equal(dual_step.crossattention.attention.query.bias, torch.zeros(48))
    assert 0.01 < dual_step.crossattention.attention.query.weight.std() < 0.03
    assert torch.equal(model.embeddings.position_ids, torch.arange(64)[None])
    new_roots = {key.split(".")[0] for key in report["new"]}
    assert new_roots == {"query_tokens", "vision_projection", "text_projection", "itm_head", "temp",
                         "dual_cross_attention", "qformer", "lm_head"}
    new_qformer = {key for key in report["new"] if key.startswith("qformer.")}
    assert new_qformer and all(".crossattention." in key for key in new_qformer)
    assert [key for key in report["new"] if key.startswith("lm_head.")] == ["lm_head.decoder.weight"]  # tied
    processor = AutoProcessor.from_pretrained(tmp_path / "out")  # BERT tokenizer + [DEC], CLIP statistics
    assert processor.tokenizer.convert_tokens_to_ids("[DEC]") == BERT_VOCAB == model.config.itg_bos_token_id
    assert processor.image_processor.size["height"] == 56 and report["processor"] == "BertTokenizer"


def test_qformer_from_blip2_and_stage2_with_opt(parts, tmp_path):
    run(parts, tmp_path / "out", "--qformer-from-blip2", str(parts / "blip2-itm"), "--opt", str(parts / "opt"))
    model = XFormerForConditionalGeneration.from_pretrained(tmp_path / "out")
    itm = Blip2ForImageTextRetrieval.from_pretrained(parts / "blip2-itm")
    opt = OPTForCausalLM.from_pretrained(parts / "opt")
    assert torch.equal(model.query_tokens, itm.query_tokens)
    assert torch.equal(model.qformer.encoder.layer[0].crossattention.attention.value.weight,
                       itm.qformer.encoder.layer[0].crossattention.attention.value.weight)
    for key, value in opt.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[key], value), key
    report = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert {key.split(".")[0] for key in report["new"]} == {"dual_cross_attention", "language_projection"}
    assert report["processor"] is None  # the OPT stand-in ships no tokenizer


def test_unplaceable_key_is_a_one_line_error(parts, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "blip2-broken"
    broken.mkdir()
    (broken / "config.json").write_text((parts / "blip2" / "config.json").read_text())
    tensors = load_file(str(parts / "blip2" / "model.safetensors"))
    tensors["vision_model.extra_head.weight"] = torch.zeros(2)
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    args = ["--blip2", str(broken), "--mae", str(parts / "mae"), "--bert", str(parts / "bert"),
            "--num-query-tokens", "4", "--dual-mae-num-heads", "2", "--output", str(tmp_path / "o")]
    capsys.readouterr()
    assert load_script().main(args) == 1  # `sys.exit(main())` in __main__: non-zero status
    stderr = capsys.readouterr().err
    assert [line for line in stderr.splitlines() if "error" in line.lower()] == [
        "convert_xformer_init: error: mapped key 'vision_model.extra_head.weight' does not exist in X-Former"
    ]
    assert "Traceback" not in stderr
    assert not (tmp_path / "o").exists()


def test_mapping_rules_reject_unknown_source_keys():
    script = load_script()
    with pytest.raises(script.ConversionError, match="cannot place BERT key 'bert.encoder.adapter.weight'"):
        script.map_state_dict({"bert.encoder.adapter.weight": torch.zeros(1)}, script.BERT_QFORMER_RULES, "BERT")
