"""The chat templates of current model families, as their tokenizer_config.json publishes them, through
``make_template("auto")``: the exact prompt, and an answer that ends at the template's end-of-turn token
(<|eot_id|>, <|im_end|>) whether or not the checkpoint lists that token among its EOS ids."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tests.helpers.tiny_tokenizer import build_tiny_tokenizer
from worker.inference.generate import AnswerText
from worker.inference.prompt import Turn, make_template
from worker.model.loader import LoadedModel

# meta-llama/Meta-Llama-3-8B-Instruct (and the 3.x Instruct models' plain-chat path): tokenizer_config.json.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Qwen/Qwen2.5-7B-Instruct: tokenizer_config.json, without its tools branch (not taken for plain chat).
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


def llama3_tokenizer():
    tok = build_tiny_tokenizer()
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3_TEMPLATE
    return tok, "<|eot_id|>"


def qwen_tokenizer():
    tok = build_tiny_tokenizer()
    tok.add_special_tokens({"eos_token": "<|endoftext|>", "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = QWEN25_TEMPLATE
    return tok, "<|im_end|>"


EXPECTED = {
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "qwen2.5": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
    ),
}
FAMILIES = {"llama3": llama3_tokenizer, "qwen2.5": qwen_tokenizer}
CONVERSATION = [Turn("user", "Hi!"), Turn("assistant", "Hello."), Turn("user", "Who are you?")]


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_renders_the_published_chat_template(family):
    tok, end_of_turn = FAMILIES[family]()
    template = make_template("auto", tok)
    assert template.name == "chat" and template.add_special_tokens is False  # the template writes its own BOS
    assert template.render("Be brief.", CONVERSATION) == EXPECTED[family]
    assert end_of_turn in template.stop_sequences
    ids = tok.encode(template.render("Be brief.", CONVERSATION), add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids(end_of_turn)) == 4  # one token per turn, not spelled out in pieces


def test_qwen_template_brings_its_default_system_prompt():
    tok, _ = qwen_tokenizer()
    text = make_template("auto", tok).render(None, [Turn("user", "Hi!")])
    assert text == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                    "<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")


def answer_of(tok, ids, eos_ids):
    template = make_template("auto", tok)
    answer = AnswerText([], 50, tok, template.stop_sequences, eos_ids)
    text = ""
    for token in ids:
        text += answer.push(token)
        if answer.done:
            break
    return text + answer.finish(), answer


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("end_is_eos", [True, False], ids=["eos-id", "stop-text-only"])
def test_the_answer_stops_at_the_end_of_turn_token(family, end_is_eos):
    tok, end_of_turn = FAMILIES[family]()
    end_id = tok.convert_tokens_to_ids(end_of_turn)
    generated = tok.encode("The capital of France is Paris.", add_special_tokens=False) + [end_id]
    generated += tok.encode(" USER: more", add_special_tokens=False)  # what a model might run on with
    eos_ids = {tok.eos_token_id, end_id} if end_is_eos else {tok.eos_token_id}
    text, answer = answer_of(tok, generated, eos_ids)
    assert text == "The capital of France is Paris."
    assert answer.done


def test_eos_ids_come_from_config_and_generation_config_lists(tmp_path):
    """Llama 3.1 Instruct: config.json and generation_config.json list <|end_of_text|>, <|eom_id|>, <|eot_id|>."""
    tok, _ = llama3_tokenizer()
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128008, 128009]}))
    loaded = LoadedModel(model=None, tokenizer=tok, config=SimpleNamespace(eos_token_id=[128001, 128009]),
                         quant=None, path=tmp_path, device=torch.device("cpu"), dtype=torch.float32)
    assert loaded.eos_token_ids == {tok.eos_token_id, 128001, 128008, 128009}
    qwen = LoadedModel(model=None, tokenizer=tok, config=SimpleNamespace(eos_token_id=151645), quant=None,
                       path=tmp_path / "none", device=torch.device("cpu"), dtype=torch.float32)
    assert qwen.eos_token_ids == {tok.eos_token_id, 151645}  # no generation_config.json: config's id
