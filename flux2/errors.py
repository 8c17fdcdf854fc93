"""One exception tree for the whole pack.

Every message is one line, names the cause, and never contains a secret: callers
build messages from validated values only, never from request headers.
"""


class Flux2Error(Exception):
    """Base of every error the pack raises on purpose."""

    def __init__(self, message: str):
        # One line: a multi-line provider message would break CLI output and ComfyUI's error toast.
        super().__init__(" ".join(str(message).split()))


class InputError(Flux2Error):
    """Bad input found before any network call or GPU step (size, refs, prompt, image, graph)."""


class ConfigError(Flux2Error):
    """Missing or invalid configuration (API key, provider URL, models folder)."""


class AuthError(ConfigError):
    """The provider rejected the API key (HTTP 401/403) or no key is configured."""


class ProviderError(Flux2Error):
    """The provider answered with an error that is not one of the more specific kinds below."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = retryable


class ModerationError(ProviderError):
    """The prompt or the result was refused by the provider's safety filter."""


class BudgetError(Flux2Error):
    """Refused before any paid call: insufficient credits or over the configured budget cap."""


class ProviderTimeout(ProviderError):
    """The provider did not finish within the configured deadline."""


class Cancelled(Flux2Error):
    """The user interrupted the run (ComfyUI interrupt, Ctrl-C)."""


class ModelLoadError(Flux2Error):
    """Local weights are missing, truncated or of another architecture."""
