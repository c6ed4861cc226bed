"""The one prompt template every answer goes through: rendering, stop sequences and the context budget.

Three templates: Xwin's Vicuna format (the default for models without a chat template), the seed article's
Alpaca format, and the tokenizer's own chat template. A conversation is a list of user/assistant turns
ending with the user's newest message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from worker.errors import PromptTooLong

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str


class PromptTemplate(ABC):
    name: str
    default_system: str | None = None
    add_special_tokens = True  # let the tokenizer add BOS (chat templates write their own)
    stop_sequences: tuple[str, ...] = ()

    @abstractmethod
    def render(self, system: str | None, turns: Sequence[Turn]) -> str:
        """The prompt text, ending where the assistant's answer begins."""


@dataclass(frozen=True)
class TextTemplate(PromptTemplate):
    """A template spelled out as format strings: a system line, each turn, then the answer's prefix."""

    name: str
    system_format: str
    user_format: str
    assistant_format: str
    answer_prefix: str
    stop_sequences: tuple[str, ...]
    default_system: str | None = None

    def render(self, system: str | None, turns: Sequence[Turn]) -> str:
        parts = [self.system_format.format(system=system)] if system else []
        for turn in turns:
            parts.append((self.user_format if turn.role == "user" else self.assistant_format).format(text=turn.text))
        parts.append(self.answer_prefix)
        return "".join(parts)


# ``{system} USER: {q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT:`` (Xwin-LM's model card).
VICUNA = TextTemplate(
    "vicuna", "{system} ", "USER: {text} ", "ASSISTANT: {text}</s>", "ASSISTANT:", ("USER:", "</s>"), VICUNA_SYSTEM
)
# ``### Instruction:\n{q}\n\n### Response:\n`` (the seed article's format).
ALPACA = TextTemplate(
    "alpaca", "{system}\n\n", "### Instruction:\n{text}\n\n", "### Response:\n{text}\n\n", "### Response:\n",
    ("### Instruction:", "### Response:"),
)


class ChatTemplate(PromptTemplate):
    """The tokenizer's own chat template; any special token it would write ends the answer."""

    name = "chat"
    add_special_tokens = False

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the model's tokenizer has no chat template; use the vicuna or alpaca template")
        self.tokenizer = tokenizer
        sample = self.render("s", [Turn("user", "q"), Turn("assistant", "a"), Turn("user", "q")])
        specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
        self.stop_sequences = tuple(sorted(t for t in specials if t and t in sample))

    def render(self, system: str | None, turns: Sequence[Turn]) -> str:
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": t.role, "content": t.text} for t in turns]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def make_template(name: str, tokenizer: PreTrainedTokenizerBase) -> PromptTemplate:
    """``auto``: the tokenizer's chat template when it has one, else Vicuna (Xwin's own format)."""
    if name == "auto":
        name = "chat" if getattr(tokenizer, "chat_template", None) else "vicuna"
    if name == "vicuna":
        return VICUNA
    if name == "alpaca":
        return ALPACA
    if name == "chat":
        return ChatTemplate(tokenizer)
    raise ValueError(f"unknown prompt template {name!r}: choose auto, vicuna, alpaca or chat")


@dataclass(frozen=True)
class FittedPrompt:
    token_ids: list[int]
    turns: tuple[Turn, ...]  # the turns that fit, newest last
    dropped_turns: int


def fit_conversation(
    template: PromptTemplate,
    tokenizer: PreTrainedTokenizerBase,
    turns: Sequence[Turn],
    budget: int,
    system: str | None = None,
) -> FittedPrompt:
    """Tokenize the conversation, dropping the oldest turns until it fits ``budget`` tokens.

    The newest user message always stays; if it alone does not fit, PromptTooLong says the limit.
    """
    if not turns or turns[-1].role != "user":
        raise ValueError("a conversation must end with the user's message")
    system = template.default_system if system is None else system
    kept = list(turns)
    while True:
        ids = tokenizer.encode(template.render(system, kept), add_special_tokens=template.add_special_tokens)
        if len(ids) <= budget:
            return FittedPrompt(ids, tuple(kept), len(turns) - len(kept))
        if len(kept) == 1:
            alone = tokenizer.encode(template.render(system, kept), add_special_tokens=template.add_special_tokens)
            raise PromptTooLong(len(alone), budget)
        kept.pop(0)
        while kept and kept[0].role != "user":  # a conversation restarts at a user turn
            kept.pop(0)
