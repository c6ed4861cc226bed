"""What the engine gets for a job: its conversation, with the question's attached files folded into the newest
message, cut until the prompt fits the model's context; and the notes the reply ends with.

Adapters read files (and a chosen message) into ``Job.attachments`` within a character budget of their own;
only the worker knows the model's token budget, so here a file that does not fit is shortened, then left out,
and the reply says so (``Job.notes`` carries what the adapter itself skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from worker.errors import PromptTooLong
from worker.inference.prompt import Turn
from worker.inference.sampling import GenerationParams
from worker.queue.job import Attachment, Job

SMALLEST_KEPT_CHARS = 200  # a file cut below this says nothing useful: it is left out instead
FENCE = "~~~~"  # unlike ``` this does not end early on a file that holds Markdown code blocks itself


def with_attachments(question: str, attachments: Sequence[Attachment]) -> str:
    """The newest message as the model reads it: each attached file, then the question."""
    if not attachments:
        return question
    files = "\n\n".join(f"Attached: {a.name}\n{FENCE}\n{a.text}\n{FENCE}" for a in attachments)
    return f"{files}\n\n{question}"


def conversation_of(job: Job, attachments: Sequence[Attachment] | None = None) -> list[Turn]:
    """The job's messages as the prompt template's turns, ``attachments`` (default: the job's) in the last."""
    attachments = job.attachments if attachments is None else attachments
    turns = [Turn(t.role, t.text) for t in job.turns]
    turns[-1] = Turn("user", with_attachments(turns[-1].text, attachments))
    return turns


def params_for(job: Job, defaults: GenerationParams) -> GenerationParams:
    """The worker's generation defaults with every override the job sets replacing its value."""
    return defaults.replace(**job.overrides.model_dump(exclude_none=True))


def submit_fitting(submit: Callable[[list[Turn]], object], job: Job) -> tuple[object, list[str]]:
    """``submit(turns)`` the job's conversation, shortening its largest attached file (halving it, then
    leaving it out) while the prompt is too long; returns what ``submit`` returned and a note per change. A
    question too long without any file raises PromptTooLong as before."""
    attachments, notes = list(job.attachments), []
    while True:
        try:
            return submit(conversation_of(job, attachments)), notes
        except PromptTooLong:
            if not attachments:
                raise
            attachments, note = shorten_largest(attachments)
            notes = [n for n in notes if not n.startswith(f"`{note_name(note)}`")] + [note]


def shorten_largest(attachments: list[Attachment]) -> tuple[list[Attachment], str]:
    """The list with its largest file cut in half, or left out once too short to help; and the note to show."""
    largest = max(range(len(attachments)), key=lambda i: len(attachments[i].text))
    file = attachments[largest]
    kept = len(file.text) // 2
    rest = attachments[:largest] + attachments[largest + 1:]
    if kept < SMALLEST_KEPT_CHARS:
        return rest, f"`{file.name}` was left out: it does not fit the model's context."
    cut = Attachment(name=file.name, text=file.text[:kept])
    note = f"`{file.name}` was cut to its first {kept:,} characters to fit the model's context."
    return attachments[:largest] + [cut] + attachments[largest + 1:], note


def note_name(note: str) -> str:
    return note[1:note.index("`", 1)]


def reply_footer(notes: Sequence[str], cancelled: bool) -> str:
    """What the final answer ends with: "(stopped)" when cancelled, then every note in italics."""
    parts = ["(stopped)"] if cancelled else []
    parts += [f"_{note}_" for note in notes]
    return "\n\n" + "\n".join(parts) if parts else ""
