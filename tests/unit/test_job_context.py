"""What the worker hands the engine for a job: its conversation with the attached files, its generation
settings, and the notes its reply ends with — fitted to the real demo model's context."""

import pytest

from tests.unit.queue.test_job import make_job
from worker.errors import PromptTooLong
from worker.inference.generate import Generator
from worker.inference.prompt import make_template
from worker.inference.sampling import GenerationParams
from worker.job_context import conversation_of, params_for, reply_footer, submit_fitting
from worker.queue.job import Attachment, GenerationOverrides, JobTurn

PARAMS = GenerationParams(temperature=0.0, max_new_tokens=64)


def test_conversation_keeps_every_turn_in_order():
    job = make_job()
    assert [(t.role, t.text) for t in conversation_of(job)] == [(t.role, t.text) for t in job.turns]


def test_attached_files_come_before_the_question_with_their_names():
    job = make_job(attachments=(Attachment(name="notes.md", text="# Plan\n```py\nx = 1\n```"),
                                Attachment(name="data.csv", text="a,b\n1,2")))
    question = conversation_of(job)[-1].text
    assert question.index("notes.md") < question.index("# Plan") < question.index("data.csv") < question.index("a,b")
    assert question.endswith(job.turns[-1].text)
    assert "```py\nx = 1\n```" in question  # the file's own code fence stays whole inside ours


def test_overrides_replace_only_what_they_set():
    defaults = GenerationParams(temperature=0.01, top_p=0.95, top_k=40, max_new_tokens=512)
    assert params_for(make_job(overrides=GenerationOverrides()), defaults) == defaults
    job = make_job(overrides=GenerationOverrides(temperature=0.0, top_k=0, max_new_tokens=64))
    assert params_for(job, defaults) == GenerationParams(temperature=0.0, top_p=0.95, top_k=0, max_new_tokens=64)


def test_reply_footer_says_stopped_and_every_note():
    assert reply_footer([], cancelled=False) == ""
    assert reply_footer([], cancelled=True) == "\n\n(stopped)"
    assert reply_footer(["`a.png` was skipped: images are not read."], cancelled=False) == (
        "\n\n_`a.png` was skipped: images are not read._")


@pytest.fixture(scope="module")
def small_context(loaded_demo):
    """The demo model with a 512-token context, so a few thousand characters of file do not fit."""
    return Generator(loaded_demo, make_template("auto", loaded_demo.tokenizer), max_context_tokens=512)


@pytest.mark.slow
def test_a_file_too_long_for_the_context_is_cut_and_said(small_context):
    big = "\n".join(f"line {i}: the service answered 200 OK" for i in range(800))
    job = make_job(turns=[JobTurn(role="user", text="How many lines answered 200?")],
                   attachments=(Attachment(name="access.log", text=big), Attachment(name="small.txt", text="hi")))
    answer, notes = submit_fitting(lambda turns: small_context.start_answer(turns, PARAMS), job)
    assert len(answer.prompt_ids) + answer.max_new_tokens <= 512
    assert notes and all(note.startswith("`access.log` was cut") for note in notes) and len(notes) == 1
    prompt = small_context.tokenizer.decode(answer.prompt_ids)
    assert "small.txt" in prompt and "line 0:" in prompt and "How many lines answered 200?" in prompt


@pytest.mark.slow
def test_a_question_too_long_alone_is_still_refused(small_context):
    job = make_job(turns=[JobTurn(role="user", text="why " * 2000)], attachments=(Attachment(name="a", text="b"),))
    with pytest.raises(PromptTooLong):
        submit_fitting(lambda turns: small_context.start_answer(turns, PARAMS), job)
