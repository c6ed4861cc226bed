"""The shared prompt template: exact formats, multi-turn, stop sequences and the context budget."""

import pytest

from tests.helpers.tiny_tokenizer import build_tiny_tokenizer
from worker.errors import PromptTooLong
from worker.inference.prompt import ALPACA, VICUNA, VICUNA_SYSTEM, ChatTemplate, Turn, fit_conversation, make_template

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATION = [Turn("user", "Hi!"), Turn("assistant", "Hello."), Turn("user", "Who are you?")]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture
def chat_tokenizer():
    tok = build_tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def test_vicuna_matches_xwin_model_card():
    text = VICUNA.render(VICUNA_SYSTEM, CONVERSATION)
    assert text == f"{VICUNA_SYSTEM} USER: Hi! ASSISTANT: Hello.</s>USER: Who are you? ASSISTANT:"


def test_alpaca_matches_seed_article():
    assert ALPACA.render(None, [Turn("user", "67*39=")]) == "### Instruction:\n67*39=\n\n### Response:\n"


def test_alpaca_multi_turn_keeps_history():
    text = ALPACA.render(None, CONVERSATION)
    assert text == "### Instruction:\nHi!\n\n### Response:\nHello.\n\n### Instruction:\nWho are you?\n\n### Response:\n"


def test_stop_sequences_end_a_made_up_next_turn():
    assert "USER:" in VICUNA.stop_sequences
    assert "### Instruction:" in ALPACA.stop_sequences


def test_chat_template_renders_and_stops_on_its_markers(chat_tokenizer):
    template = ChatTemplate(chat_tokenizer)
    text = template.render("Be brief.", [Turn("user", "Hi!")])
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    assert set(template.stop_sequences) >= {"<|im_start|>", "<|im_end|>"}
    assert template.add_special_tokens is False


def test_auto_picks_chat_template_when_tokenizer_has_one(tokenizer, chat_tokenizer):
    assert make_template("auto", chat_tokenizer).name == "chat"
    assert make_template("auto", tokenizer).name == "vicuna"
    with pytest.raises(ValueError, match="no chat template"):
        make_template("chat", tokenizer)
    with pytest.raises(ValueError, match="unknown prompt template"):
        make_template("llama9", tokenizer)


def test_everything_fits_when_budget_allows(tokenizer):
    fitted = fit_conversation(VICUNA, tokenizer, CONVERSATION, budget=1000)
    assert fitted.turns == tuple(CONVERSATION) and fitted.dropped_turns == 0
    assert fitted.token_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(fitted.token_ids, skip_special_tokens=True).endswith("Who are you? ASSISTANT:")


def test_history_is_trimmed_oldest_first(tokenizer):
    turns = []
    for i in range(10):
        turns += [Turn("user", f"question number {i} " * 3), Turn("assistant", f"answer number {i} " * 3)]
    turns.append(Turn("user", "the newest question"))
    full = len(fit_conversation(VICUNA, tokenizer, turns, budget=10_000).token_ids)
    budget = full // 2
    fitted = fit_conversation(VICUNA, tokenizer, turns, budget=budget)
    assert len(fitted.token_ids) <= budget
    assert fitted.dropped_turns > 0
    assert fitted.turns[-1].text == "the newest question"
    assert fitted.turns[0].role == "user"
    assert list(fitted.turns) == turns[len(turns) - len(fitted.turns) :]  # a suffix: oldest dropped first


def test_a_message_too_long_alone_says_the_limit(tokenizer):
    with pytest.raises(PromptTooLong) as caught:
        fit_conversation(VICUNA, tokenizer, [Turn("user", "word " * 500)], budget=100)
    assert "limit is 100 tokens" in str(caught.value)
    assert caught.value.prompt_tokens > 100


def test_conversation_must_end_with_user(tokenizer):
    with pytest.raises(ValueError, match="end with the user"):
        fit_conversation(VICUNA, tokenizer, [Turn("user", "a"), Turn("assistant", "b")], budget=100)
