"""Markdown that must render whole: tables rewritten as aligned code, links/code spans never cut or shown half."""

import re

from worker.posters.markdown_spans import close_open_fence, hold_back_unfinished, spans
from worker.posters.markdown_tables import display_width, tables_to_code
from worker.posters.split import split_message

TABLE = """Compare:

| Name | Role | Age |
|------|:----:|----:|
| **Alice** | `admin` | 31 |
| Bob | [docs](https://example.com/bob) | 7 |

Done."""


def test_a_table_becomes_an_aligned_code_block():
    assert tables_to_code(TABLE) == """Compare:

```
Name  | Role                           | Age
------+--------------------------------+----
Alice | admin                          |  31
Bob   | docs (https://example.com/bob) |   7
```

Done."""


def test_a_table_inside_a_code_block_is_left_alone():
    text = "```\n| a | b |\n|---|---|\n| 1 | 2 |\n```"
    assert tables_to_code(text) == text


def test_pipes_that_are_not_a_table_are_left_alone():
    text = "Use a | b in the shell.\nNo table here | really\n- item"
    assert tables_to_code(text) == text


def test_escaped_pipes_and_wide_characters_keep_columns_aligned():
    out = tables_to_code("| k | v |\n|---|---|\n| a\\|b | 東京 |\n| 🙂 | x |")
    rows = out.split("\n")[1:-1]
    assert "a|b" in out
    assert len({display_width(row.split(" | ")[0]) for row in rows if " | " in row}) == 1


def test_spans_are_links_code_and_entities_outside_code_blocks():
    text = "See [the docs](https://x.y/a_(b)) and `a b` &amp; <https://z|z>\n```\n[not](a link)\n```"
    found = [text[start:end] for start, end in spans(text)]
    assert found == ["[the docs](https://x.y/a_(b))", "`a b`", "&amp;", "<https://z|z>"]


def test_an_unfinished_link_is_held_back_while_streaming():
    assert hold_back_unfinished("Read [the guide](https://example.com/gu") == "Read"
    assert hold_back_unfinished("Read [the gui") == "Read"
    assert hold_back_unfinished("Read [the guide]") == "Read"
    assert hold_back_unfinished("Read [the guide](https://example.com).") == "Read [the guide](https://example.com)."


def test_an_unfinished_code_span_or_entity_is_held_back():
    assert hold_back_unfinished("Run `pip ins") == "Run"
    assert hold_back_unfinished("Run `pip install x` now") == "Run `pip install x` now"
    assert hold_back_unfinished("a &am") == "a"
    assert hold_back_unfinished("hi <@U12") == "hi"


def test_inside_a_code_block_nothing_is_held_back_and_the_block_is_closed():
    text = "```python\nx = [1, 2"
    assert hold_back_unfinished(text) == text
    assert close_open_fence(text) == text + "\n```"
    assert close_open_fence("```\nx\n```") == "```\nx\n```"


def test_a_split_never_cuts_a_link():
    link = "[a link with many words in its label](https://example.com/" + "p" * 30 + ")"
    text = " ".join(["word"] * 30 + [link] + ["word"] * 30)
    for limit in range(60, 200, 7):
        for part in split_message(text, limit):
            assert part.count("[") == part.count("]"), (limit, part)


def test_a_split_never_cuts_a_code_span():
    text = "Run " + " ".join(f"`cmd {i} --flag`" for i in range(40))
    for part in split_message(text, 100):
        assert part.count("`") % 2 == 0, part


def test_every_part_of_a_long_table_is_a_closed_code_block():
    rows = "\n".join(f"| row {i} | value {i} |" for i in range(200))
    parts = split_message(close_open_fence(tables_to_code(f"| k | v |\n|---|---|\n{rows}")), 500)
    assert len(parts) > 3
    assert all(len(re.findall(r"^```", p, re.MULTILINE)) % 2 == 0 for p in parts)


def test_a_stray_bracket_in_prose_does_not_hold_back_the_rest_of_the_line():
    assert hold_back_unfinished("if a <b then c is bigger") == "if a <b then c is bigger"
    assert hold_back_unfinished("See <https://example.com|the site") == "See"
