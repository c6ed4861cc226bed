"""Every setting in one object, read from the environment (prefix ``XWINBOT_``) and a ``.env`` file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.sampling import GenerationParams

XWIN_MODEL = "TheBloke/Xwin-LM-13B-V0.1-GPTQ"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XWINBOT_", env_file=".env", extra="ignore", protected_namespaces=())

    model: str | None = Field(
        None, description="Hugging Face repo id or local directory of a GPTQ checkpoint. Unset: Xwin-LM-13B on a "
        "GPU, the offline demo model (SmolLM2-135M, built locally) on CPU.",
    )
    model_revision: str = Field("main", description="Hub branch or commit, e.g. gptq-4bit-32g-actorder_True.")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    template: Literal["auto", "vicuna", "alpaca", "chat"] = Field(
        "auto", description="auto: the tokenizer's chat template if it has one, else Vicuna (Xwin's format)."
    )
    system_prompt: str | None = Field(None, description="Unset: the template's own (Vicuna's standard line).")
    max_context_tokens: int | None = Field(
        None, ge=64, description="KV cache length: prompt + answer. Unset: the model's max positions."
    )
    cuda_graphs: bool = Field(True, description="Replay each decode step as a captured CUDA graph (GPU only).")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the job queue; `xwinbot up` starts a local one (AOF on) if none answers here.")
    queue_name: str = Field("xwinbot", description="RQ queue name shared by adapters and workers.")
    data_dir: str = Field("~/.local/share/xwinbot", description="Where `xwinbot up` keeps a local Redis's append-only file.")
    max_batch: int = Field(8, ge=1, le=64, description="Answers generated together (continuous batching slots) per worker.")
    per_user_jobs: int = Field(3, ge=1, description="Questions one person may have queued or running at once.")
    queued_jobs: int = Field(200, ge=1, description="Questions the queue holds before answering 'busy'.")
    heartbeat_s: int = Field(5, ge=1, description="Worker heartbeat; a worker silent for 3 beats is dead and its answers restart elsewhere.")
    maintenance_interval_s: int = Field(10, ge=1, description="How often each worker re-queues answers abandoned by dead workers.")
    update_interval_s: float = Field(1.0, gt=0, description="Least time between streamed edits of a reply.")
    temperature: float = Field(0.01, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    max_new_tokens: int = Field(512, ge=1)

    def generation_params(self) -> GenerationParams:
        return GenerationParams(self.temperature, self.top_p, self.top_k, self.max_new_tokens)
