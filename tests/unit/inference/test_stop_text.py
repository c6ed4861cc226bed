"""Streaming text: stop sequences are cut cleanly even when split across pieces; no broken characters."""

import pytest

from tests.helpers.tiny_tokenizer import build_tiny_sentencepiece_tokenizer, build_tiny_tokenizer
from worker.inference.stop_text import IncrementalDecoder, StopCutter


def run(cutter: StopCutter, pieces):
    out = [cutter.push(p) for p in pieces]
    out.append(cutter.finish())
    return "".join(out), out


def test_stop_sequence_split_across_pieces_is_cut():
    text, _ = run(StopCutter(["### Instruction:"]), ["67*39 = 2613\n\n##", "# Instr", "uction:\n12*12=", "144"])
    assert text == "67*39 = 2613"


def test_text_resembling_a_stop_prefix_is_released():
    text, pieces = run(StopCutter(["USER:"]), ["Ask the US", "ER guide", " now."])
    assert text == "Ask the USER guide now."
    assert pieces[0] == "Ask the"  # " US" held back until it proved harmless


@pytest.mark.parametrize("split", range(1, 30))
def test_every_split_point_gives_the_same_answer(split):
    raw = "The answer is 42.\nUSER: and now a made-up turn"
    text, _ = run(StopCutter(["USER:", "</s>"]), [raw[:split], raw[split:]])
    assert text == "The answer is 42."


def test_trailing_whitespace_is_dropped_at_the_end():
    text, _ = run(StopCutter(["USER:"]), ["Paris.", "\n\n", "  "])
    assert text == "Paris."


def test_nothing_passes_after_the_stop():
    cutter = StopCutter(["STOP"])
    assert cutter.push("a STOP b") == "a"
    assert cutter.stopped
    assert cutter.push("more") == "" and cutter.finish() == ""


def test_incremental_decoder_reassembles_multibyte_text():
    tok = build_tiny_tokenizer()
    text = "héllo wörld ✓ 日本 done"
    ids = tok.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


TOKENIZERS = {"byte-level BPE": build_tiny_tokenizer(), "Llama-2 shape": build_tiny_sentencepiece_tokenizer()}
TEXTS = ["héllo wörld ✓ 日本 done", "  two leading spaces,  two  inside\nand a newline", "USER: capital? 🇫🇷 Paris."]


@pytest.mark.parametrize("rust", [True, False], ids=["rust-stream", "python-windows"])
@pytest.mark.parametrize("name", TOKENIZERS)
def test_each_character_streams_as_soon_as_its_last_token_arrives(name, rust):
    tokenizer = TOKENIZERS[name]
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        decoder = IncrementalDecoder(tokenizer)
        if not rust:
            decoder.stream = None  # as with a tokenizer that has no Rust backend
        shown = ""
        for count, token in enumerate(ids, 1):
            piece = decoder.push(token)
            assert "\ufffd" not in piece
            shown += piece
            so_far = tokenizer.decode(ids[:count])
            if not so_far.endswith("\ufffd"):  # every complete character is already on screen
                assert shown == so_far
        assert shown == tokenizer.decode(ids) == text
