"""Long answers cut into messages a platform accepts: natural boundaries, code blocks that render on their own."""

import re

import pytest

from worker.posters.split import split_message


def rejoin(parts):
    """The text the reader sees across the messages, with our close/reopen fence pairs taken out."""
    text = "\n".join(parts)
    return re.sub(r"\n```\n```[^\n]*\n", "\n", text)


def test_short_text_is_one_message():
    assert split_message("Paris.", 2000) == ["Paris."]


def test_paragraphs_are_kept_whole_when_they_fit():
    paragraphs = [(f"Paragraph {i}: " + "lorem ipsum " * 20).strip() for i in range(10)]
    parts = split_message("\n\n".join(paragraphs), 700)
    assert all(len(p) <= 700 for p in parts)
    for part in parts:  # every message is whole paragraphs
        assert all(chunk in paragraphs for chunk in part.split("\n\n"))
    assert "\n\n".join(parts) == "\n\n".join(paragraphs)


def test_a_code_block_is_closed_and_reopened_with_its_language():
    code = "\n".join(f"print({i})" for i in range(300))
    text = f"Here is the script:\n\n```python\n{code}\n```\n\nRun it with python."
    parts = split_message(text, 500)
    assert len(parts) > 3 and all(len(p) <= 500 for p in parts)
    for part in parts:
        assert part.count("```") % 2 == 0, part  # each message's code block is closed
    for part in parts[1:-1]:
        assert part.startswith("```python\n")
    assert rejoin(parts).replace("\n\n", "\n") == text.replace("\n\n", "\n")


def test_a_word_longer_than_the_limit_is_cut_hard():
    parts = split_message("x" * 4500, 2000)
    assert [len(p) for p in parts] == [1996, 1996, 508]  # room is kept for a closing fence


def test_the_measure_counts_what_the_platform_counts():
    text = ("say @here or <!channel>. " * 300).strip()  # each ping gets an invisible word joiner
    from worker.posters.slack_text import slack_size

    parts = split_message(text, 1000, measure=slack_size)
    assert all(slack_size(p) <= 1000 for p in parts)
    assert " ".join(parts) == text


def test_cuts_stay_put_as_the_answer_grows():
    """Streaming edits only the last message: earlier messages never change as text arrives."""
    text = " ".join(f"word{i}" + ("\n\n" if i % 37 == 0 else "") for i in range(2000))
    final = split_message(text, 1000)
    for end in range(1000, len(text), 97):
        partial = split_message(text[:end], 1000)
        assert partial[:-1] == final[: len(partial) - 1]


def test_limit_must_leave_room_for_fences():
    with pytest.raises(ValueError):
        split_message("abc", 10)
