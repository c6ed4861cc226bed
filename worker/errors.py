"""Errors a user or operator can read: each names what is wrong and where."""


class CheckpointError(Exception):
    """A checkpoint is missing a file, has a corrupt file, or disagrees with its own config."""


class UnsupportedCheckpoint(CheckpointError):
    """A well-formed checkpoint in a format this loader does not serve (names the unsupported property)."""


class PromptTooLong(ValueError):
    """The newest message alone does not fit the context budget."""

    def __init__(self, prompt_tokens: int, limit: int):
        self.prompt_tokens = prompt_tokens
        self.limit = limit
        super().__init__(
            f"Your message is too long: {prompt_tokens} tokens with the prompt template; the limit is {limit} "
            "tokens. Please shorten it."
        )


class BackendUnavailable(RuntimeError):
    """The external engine (``XWINBOT_BACKEND=openai``) did not answer: a 5xx, a timeout, a dropped connection.
    The job raises it so RQ retries the job; on the last attempt the user is told instead. Never holds the key."""


class BackendRefused(ValueError):
    """The external engine refused the request for a reason another attempt does not fix (our key, the model
    name, a request it rejects, still rate-limited after waiting); the message is the reply the user gets."""


class RedisUnavailable(RuntimeError):
    """Redis cannot be used at start: nothing answers, the password or ACL user is refused, TLS fails. The
    message is one line naming the setting to check (never the password); the command exits 2."""
