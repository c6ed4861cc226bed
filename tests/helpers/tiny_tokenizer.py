"""A tiny Llama-like tokenizer built offline (byte-level BPE trained in memory on a few sentences).

Special tokens: ``<unk>`` = 0, ``<s>`` = 1 (bos), ``</s>`` = 2 (eos), matching LlamaConfig's defaults.
Like Llama's tokenizer, encoding prepends ``<s>``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from benchmarks.synthetic_checkpoint import llama2_shape_tokenizer

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
VOCAB_SIZE = 300

_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is the capital of France? ASSISTANT: The capital of France is Paris.",
    "### Instruction:\nAdd two and three.\n\n### Response:\nTwo plus three is five.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "Hello there! How are you today? I am fine, thank you.",
]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def write_tiny_tokenizer(directory) -> PreTrainedTokenizerFast:
    """Build the tiny tokenizer and ``save_pretrained`` it into ``directory``."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(str(Path(directory)))
    return tokenizer



def build_tiny_sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-2's tokenizer shape (Xwin's), trained on the same sentences."""
    return llama2_shape_tokenizer(_CORPUS)
