"""One exception tree for the whole pack.

Every message is one line, names the cause, and never contains a secret: callers build messages from
validated values only, never from request headers, and every message passes the one scrubber
(`flux2/redaction.py`) on its way in, so provider text that echoes a key cannot carry it out.
"""
from .redaction import scrub


class Flux2Error(Exception):
    """Base of every error the pack raises on purpose.

    A provider call that fails after something was paid for carries what was kept:
    - `salvaged`: a GenerationResult with every image the provider returned (and its billed cost), or
      None. The backend has already booked its cost in the run's ledger and handed it to the run's
      result sink (`RunContext.on_result`), so a runner saves it without booking it again.
    - `maybe_billed`: task ids (Runware taskUUIDs, BFL task ids and polling URLs) of tasks that were
      sent and may still finish and be billed although no result came back, so they can be looked up.
    """

    salvaged = None
    maybe_billed: tuple = ()

    def __init__(self, message: str):
        # One line: a multi-line provider message would break CLI output and ComfyUI's error toast.
        super().__init__(" ".join(scrub(message).split()))


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
