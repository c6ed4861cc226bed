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
