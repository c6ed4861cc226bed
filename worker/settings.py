"""Every setting in one object, read from the environment (prefix ``XWINBOT_``) and a ``.env`` file."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

XWIN_MODEL = "TheBloke/Xwin-LM-13B-V0.1-GPTQ"

# Defaults that code outside ``Settings`` also starts from (a class's own default, a function's keyword): named
# once here, used by the fields below and imported there.
DEFAULT_TEMPERATURE = 0.01  # the seed article's sampling settings: temperature, top_p, top_k, answer length
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_MAX_BATCH = 8
# Off: on the H200 mixing gave new questions their first words sooner under load but slowed the answers already
# streaming, and cost 6% of the 32-user throughput with 64-token prompts (benchmarks/NOTES.md row 59).
DEFAULT_MIX_PREFILL = False
KVCacheDtype = Literal["auto", "fp8", "int8"]  # XWINBOT_KV_CACHE_DTYPE (worker.kernels.kv_quant)
KV_CACHE_DTYPES = get_args(KVCacheDtype)  # for the benchmarks' --kv-cache-dtype
PrefillDtype = Literal["auto", "fp8"]  # XWINBOT_PREFILL_DTYPE (worker.kernels.w4a16.fp8_dequantized_matmul)
PREFILL_DTYPES = get_args(PrefillDtype)  # for the benchmarks' --prefill-dtype
DEFAULT_BACKEND_TIMEOUT_S = 60.0
DEFAULT_QUEUE_NAME = "xwinbot"  # also the prefix of every Redis key (worker.queue.keys)
DEFAULT_PER_USER_JOBS = 3
DEFAULT_QUEUED_JOBS = 200
DEFAULT_UPDATE_INTERVAL_S = 1.0
DEFAULT_POSITION_INTERVAL_S = 3.0
DEFAULT_DELIVERY_RETRY_S = 180.0
DEFAULT_LOG_FORMAT = "text"
DEFAULT_LOG_LEVEL = "INFO"
SLACK_API_URL = "https://slack.com/api/"
DEFAULT_SLACK_FOLLOWUPS = "any"
DISCORD_API_URL = "https://discord.com/api/v10"
DEFAULT_HISTORY_MESSAGES = 100  # Slack's and Discord's alike
DEFAULT_SLACK_QUESTION_RETRY_S = 24 * 3600.0
# What Slack's assistant view offers a new conversation (Slack shows at most 4).
DEFAULT_SLACK_SUGGESTED_PROMPTS = ("Explain this error message", "Summarise a long text for me",
                                   "Draft a reply to a customer", "Review this code")
DEFAULT_FEEDBACK_RETENTION_DAYS = 90.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XWINBOT_", env_file=".env", extra="ignore", protected_namespaces=())

    model: str | None = Field(
        None, description="Hugging Face repo id or local directory of a GPTQ checkpoint. Unset: Xwin-LM-13B on a "
        "GPU, the offline demo model (SmolLM2-135M, built locally) on CPU.",
    )
    model_revision: str = Field("main", description="Hub branch or commit, e.g. gptq-4bit-32g-actorder_True.")
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto: the GPU when one is visible, else the CPU."
    )
    template: Literal["auto", "vicuna", "alpaca", "chat"] = Field(
        "auto", description="auto: the tokenizer's chat template if it has one, else Vicuna (Xwin's format)."
    )
    system_prompt: str | None = Field(None, description="Unset: the template's own (Vicuna's standard line).")
    max_context_tokens: int | None = Field(
        None, ge=64, description="KV cache length: prompt + answer. Unset: the model's max positions."
    )
    int4_kernel: Literal["auto", "triton", "tinygemm"] = Field(
        "auto", description="auto: our Triton w4a16 kernels on a GPU, PyTorch's int4 kernels on CPU; tinygemm: "
        "PyTorch's everywhere (slower for batches and long prompts).",
    )
    kv_cache_gb: float | None = Field(
        None, gt=0, description="GPU memory for the KV cache (max_batch conversations). Unset: 90% of what is free "
        "after loading the model, minus 2 GB; each conversation's context shrinks to fit.",
    )
    kv_cache_dtype: KVCacheDtype = Field(
        "auto", description="auto: the model's dtype (bf16); fp8: e4m3 with per-(layer, KV head) scales set at "
        "load, half the memory per token (twice the conversation length in the same budget), less exact attention: "
        "94% next-token agreement with bf16 on the demo model (benchmarks/NOTES.md row 51), below the 99% that a "
        "default needs, so opt-in. int8: codes with a scale per (token, KV head) set as each is written, K first "
        "evened out by a scale per channel calibrated at load, fp8's memory plus 3%: 96.9% next-token agreement with "
        "bf16 on the demo model (the whole model in fp32 against bf16: 96.3%) and a seventh of fp8's KL divergence "
        "(benchmarks/NOTES.md row 63); below 99% too, so opt-in until measured on the GPU.",
    )
    prefill_dtype: PrefillDtype = Field(
        "auto", description="auto: a prompt's int4 matmuls (more than 64 rows) in the model's dtype (bf16); fp8: on "
        "fp8 tensor cores (twice bf16's rate on Hopper and Ada GPUs, compute capability 8.9+), the weights over a "
        "scale per output column and the prompt over a scale per token. Less exact: on the demo model 87% "
        "next-token agreement with the exact int4 model where bf16 keeps 97% (benchmarks/NOTES.md row 70), and on "
        "an H100 the prompts' matmuls only 1.2-1.3x faster, 32 users' prefill 7% (row 71), so opt-in. Needs the "
        "Triton int4 kernels (XWINBOT_INT4_KERNEL).",
    )
    cuda_graphs: bool = Field(True, description="Replay each decode step, and each prefill of up to 4,096 padded "
                              "prompt tokens, as a captured CUDA graph (GPU only).")
    # An external engine instead of our own (see README "An external engine as the backend").
    backend: Literal["own", "openai"] = Field(
        "own", description="own: load the model and generate on this machine; openai: stream answers from an "
        "OpenAI-compatible server (vLLM, llama.cpp, another xwinbot's api) at XWINBOT_BACKEND_URL, no model loaded.",
    )
    backend_url: str | None = Field(
        None, description="The openai backend's base URL, /v1 included, e.g. http://vllm:8000/v1.",
    )
    backend_key: SecretStr | None = Field(
        None, description="Bearer key of the openai backend (vLLM's --api-key); unset: the placeholder EMPTY is sent.",
    )
    backend_model: str | None = Field(
        None, description="The model the openai backend serves, as its /v1/models names it.",
    )
    backend_timeout_s: float = Field(
        DEFAULT_BACKEND_TIMEOUT_S, gt=0, description="How long the openai backend may stay silent (connecting, "
        "before the first token, between tokens) before the attempt fails and the job is retried.",
    )
    backend_top_k: bool = Field(
        False, description="Send top_k to the openai backend too (an extra parameter vLLM accepts; OpenAI's own "
        "API refuses it).",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for the job queue; `xwinbot up` starts a local one (AOF on) if none answers here.",
    )
    redis_retry_s: float = Field(
        30.0, ge=0, description="How long a Redis command waits out a Redis outage (restart, failover) before it "
        "fails; answers and questions in progress pause meanwhile. 0: fail at once.",
    )
    redis_ca_file: str | None = Field(
        None, description="TLS (XWINBOT_REDIS_URL=rediss://…): the CA certificate (PEM) that signed Redis's "
        "certificate; unset: the system's CAs. The password and ACL user go in the URL: redis://user:password@host/0.",
    )
    redis_cert_file: str | None = Field(
        None, description="rediss:// with mutual TLS: this client's certificate (PEM), with XWINBOT_REDIS_KEY_FILE.",
    )
    redis_key_file: str | None = Field(
        None, description="rediss:// with mutual TLS: this client's private key (PEM).",
    )
    queue_name: str = Field(
        DEFAULT_QUEUE_NAME, description="Names this deployment: the RQ queue its adapters and workers share AND the "
        "prefix of every Redis key it writes, so deployments with different names can share one Redis.",
    )
    data_dir: str = Field(
        "~/.local/share/xwinbot", description="Where `xwinbot up` keeps a local Redis's append-only file."
    )
    max_batch: int = Field(
        DEFAULT_MAX_BATCH, ge=1, le=64, description="Answers generated together (continuous batching slots) per "
        "worker; with XWINBOT_BACKEND=openai, answers streamed from the server at once.",
    )
    mix_prefill: bool = Field(
        DEFAULT_MIX_PREFILL, description="Prefill new questions inside the decode steps of answers already "
        "streaming: new questions get their first words sooner under load, the answers streaming meanwhile go "
        "slower (measured trade-off in README's Speed section); off: each prefill runs between two steps.",
    )
    per_user_jobs: int = Field(
        DEFAULT_PER_USER_JOBS, ge=1, description="Questions one person may have queued or running at once."
    )
    queued_jobs: int = Field(
        DEFAULT_QUEUED_JOBS, ge=1, description="Questions the queue holds before answering 'busy'."
    )
    heartbeat_s: int = Field(
        5, ge=1, description="Worker heartbeat; a worker silent for 3 beats is dead and its answers restart elsewhere."
    )
    maintenance_interval_s: int = Field(
        10, ge=1, description="How often each worker re-queues answers abandoned by dead workers."
    )
    update_interval_s: float = Field(
        DEFAULT_UPDATE_INTERVAL_S, gt=0, description="Least time between streamed edits of a reply."
    )
    position_interval_s: float = Field(
        DEFAULT_POSITION_INTERVAL_S, gt=0,
        description="How often queued questions' placeholders get their new queue position.",
    )
    delivery_retry_s: float = Field(
        DEFAULT_DELIVERY_RETRY_S, ge=0, description="How long an answer is retried while the chat platform is down "
        "(5xx, 429, no connection), with backoff up to 10 s; after it the job fails with the reason.",
    )
    temperature: float = Field(
        DEFAULT_TEMPERATURE, ge=0.0, le=5.0, description="Sampling temperature (0: greedy); the seed article's 0.01."
    )
    top_p: float = Field(
        DEFAULT_TOP_P, gt=0.0, le=1.0,
        description="Nucleus sampling: keep the likeliest tokens up to this total probability.",
    )
    top_k: int = Field(DEFAULT_TOP_K, ge=0, description="Keep only the k likeliest tokens (0: off).")
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, description="Longest answer, in tokens.")

    # Files on questions and the channels file (see README "Slack" and "Discord").
    attachment_max_bytes: int = Field(
        5_000_000, ge=1, description="Largest file on a question that is downloaded and read (bytes); larger ones "
        "are skipped and the reply says so.",
    )
    attachment_timeout_s: float = Field(
        10.0, gt=0, description="How long downloading one file may wait for the platform before it is skipped.",
    )
    attachment_max_chars: int = Field(
        60_000, ge=0, description="Characters of file text one question may carry, all its files together (the "
        "worker cuts further to fit the model's context, and says so).",
    )
    channels_file: str | None = Field(
        None, description="YAML or TOML file giving Slack channels and Discord channels or servers their own system "
        "prompt, sampling settings and answer length; checked at start, reloaded when it changes.",
    )

    # Operating (see README "Operating").
    metrics_port: int = Field(9400, ge=0, le=65535, description="This process's /metrics and /healthz port; 0: off.")
    metrics_host: str = Field("0.0.0.0", description="Interface the metrics/health endpoint listens on.")
    log_format: Literal["text", "json"] = Field(
        DEFAULT_LOG_FORMAT, description="json: one JSON object per log line (with job ids)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        DEFAULT_LOG_LEVEL, description="Least severe log level shown."
    )

    # Slack (see README "Slack"). Secrets are SecretStr: they never show in logs or reprs.
    slack_bot_token: SecretStr | None = Field(
        None, description="Bot token (xoxb-…); the Slack adapter and poster need it."
    )
    slack_app_token: SecretStr | None = Field(
        None, description="App-level token (xapp-…, connections:write) for Socket Mode."
    )
    slack_signing_secret: SecretStr | None = Field(
        None, description="Signing secret; HTTP mode verifies every request with it."
    )
    slack_mode: Literal["socket", "http"] = Field(
        "socket", description="socket: no public URL needed; http: Slack posts to /slack/events."
    )
    slack_http_port: int = Field(3000, ge=1, le=65535, description="Port of the HTTP-mode endpoint.")
    slack_api_url: str = Field(SLACK_API_URL, description="Slack Web API base URL (tests point it at a fake).")
    slack_allowed_channels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Channel ids the bot answers in, comma-separated; empty: every channel it is in.",
    )
    slack_allowed_users: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="User ids the bot answers, comma-separated; empty: everyone."
    )
    slack_followups: Literal["any", "mention"] = Field(
        DEFAULT_SLACK_FOLLOWUPS, description="In a thread the bot answered: any: every message continues the "
        "conversation; mention: only messages that mention the bot.",
    )
    slack_history_messages: int = Field(
        DEFAULT_HISTORY_MESSAGES, ge=1, le=1000, description="Most thread/DM messages read as context."
    )
    slack_question_retry_s: float = Field(
        DEFAULT_SLACK_QUESTION_RETRY_S, gt=0, description="How long a question that arrived while Slack's Web API "
        "was down (5xx, 429, no connection) keeps being retried, with backoff up to 10 s, before it is given up "
        "(logged).",
    )
    slack_suggested_prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SLACK_SUGGESTED_PROMPTS), max_length=4,
        description="What the assistant view suggests in a new conversation: a JSON list of up to 4 prompts.",
    )
    slack_native_streaming: bool = Field(
        True, description="Stream answers in the assistant view (DM threads) with Slack's chat.startStream; false: "
        "edit a placeholder with chat.update, as in channels.",
    )

    # Feedback (👍/👎 under answers; `xwinbot feedback`).
    feedback_retention_days: float = Field(
        DEFAULT_FEEDBACK_RETENTION_DAYS, gt=0, description="How long a rating (with its question and answer) is kept.",
    )

    # Discord (see README "Discord").
    discord_token: SecretStr | None = Field(None, description="Bot token; the Discord adapter and poster need it.")
    discord_api_url: str = Field(DISCORD_API_URL, description="Discord REST base URL (tests point it at a fake).")
    discord_dev_guild_id: int | None = Field(
        None, description="Sync /ask to this server only (instant, for development); unset: global commands."
    )
    discord_allowed_guilds: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Server ids, comma-separated; empty: all."
    )
    discord_allowed_channels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Channel ids (their threads too), comma-separated; empty: all."
    )
    discord_allowed_roles: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Role ids admitted (besides allowed users); empty with no users: everyone."
    )
    discord_allowed_users: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="User ids admitted (besides allowed roles)."
    )
    discord_message_content: bool = Field(
        False, description="Use the privileged Message Content intent (enable it in the Developer Portal too): then "
        "any message in a bot thread continues it; without it only messages that mention the bot do.",
    )
    discord_history_messages: int = Field(
        DEFAULT_HISTORY_MESSAGES, ge=1, le=1000, description="Most thread/DM messages read as context."
    )

    # The OpenAI-compatible HTTP API (see README "Use it from your tools").
    api_keys: SecretStr | None = Field(
        None, description="Bearer keys of `xwinbot api`, comma-separated name:key pairs (e.g. ci:sk-…,alice:sk-…); "
        "the name is the requester (per-key caps). Set: `xwinbot up` serves the API too.",
    )
    api_host: str = Field(
        "127.0.0.1", description="Interface `xwinbot api` listens on (0.0.0.0 in its container).",
    )
    api_port: int = Field(8000, ge=1, le=65535, description="Port of `xwinbot api` (/v1/chat/completions).")

    @field_validator("slack_allowed_channels", "slack_allowed_users", "discord_allowed_guilds",
                     "discord_allowed_channels", "discord_allowed_roles", "discord_allowed_users", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


    @field_validator("api_keys")
    @classmethod
    def _api_keys_are_named(cls, value: SecretStr | None) -> SecretStr | None:
        """name:key pairs with distinct names; the message never repeats a key."""
        if value is None or not value.get_secret_value().strip():
            return None
        names = []
        for pair in value.get_secret_value().split(","):
            name, _, key = pair.strip().partition(":")
            if not name.strip() or not key.strip():
                raise ValueError(f"expected comma-separated name:key pairs; pair {len(names) + 1} has no "
                                 f"{'name' if not name.strip() else 'key'}")
            names.append(name.strip())
        if len(set(names)) != len(names):
            raise ValueError("each key needs a name of its own (the names repeat)")
        return value
