"""What the RQ task hands the engine for a job: its conversation and its generation settings."""

from tests.unit.queue.test_job import make_job
from worker.inference.sampling import GenerationParams
from worker.queue.job import GenerationOverrides
from worker.tasks import conversation_of, params_for


def test_conversation_keeps_every_turn_in_order():
    job = make_job()
    assert [(t.role, t.text) for t in conversation_of(job)] == [(t.role, t.text) for t in job.turns]


def test_overrides_replace_only_what_they_set():
    defaults = GenerationParams(temperature=0.01, top_p=0.95, top_k=40, max_new_tokens=512)
    assert params_for(make_job(overrides=GenerationOverrides()), defaults) == defaults
    job = make_job(overrides=GenerationOverrides(temperature=0.0, top_k=0, max_new_tokens=64))
    assert params_for(job, defaults) == GenerationParams(temperature=0.0, top_p=0.95, top_k=0, max_new_tokens=64)
