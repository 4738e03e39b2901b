"""The exception hierarchy of comfyui-lora-bridge: catch ``LoraBridgeError`` for all of them."""

from __future__ import annotations


class LoraBridgeError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(LoraBridgeError):
    """The environment or configuration is missing something or is inconsistent."""


class FetchError(LoraBridgeError):
    """A LoRA download failed for good (after retries) or could not start."""


class IntegrityError(FetchError):
    """The downloaded bytes are not what was expected (size, SHA-256 or safetensors header)."""


class FetchCancelled(FetchError):
    """The caller cancelled a download; the partial file is kept (hidden) so a later fetch resumes it."""


class PodError(LoraBridgeError):
    """A ComfyUI pod could not be started, reached, or did not answer as expected."""


class PodUnavailable(PodError):
    """The pod stopped answering (HTTP and WebSocket), or no pod is healthy enough to take a job."""


class NoPodAvailable(PodUnavailable):
    """No healthy pod (with the requested labels) is left to run the job."""


class PodDraining(PodError):
    """The pod is draining and the job had not started there: it was taken out of the pod's queue, to run elsewhere."""


class PodStartError(PodError):
    """A local ComfyUI process failed to start; ``log_tail`` holds the end of its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- ComfyUI log (tail) ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


class PromptRejected(PodError):
    """ComfyUI refused a graph at ``POST /prompt``; ``node_errors`` is ComfyUI's own detail."""

    def __init__(self, message: str, node_errors: dict | None = None) -> None:
        super().__init__(message)
        self.node_errors = node_errors or {}


class PromptLost(PodError):
    """A prompt the bridge submitted is neither in the pod's queue nor in its history."""


class JobFailed(PodError):
    """A graph was accepted but failed (or was interrupted) while running on the pod."""

    def __init__(self, message: str, node_id: str | None = None, node_type: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.node_type = node_type


class JobInterrupted(JobFailed):
    """The pod stopped the job (ComfyUI's interrupt) before it finished."""


class RequestInvalid(LoraBridgeError):
    """A request to the service does not match its schema; the message names the field."""


class TooLarge(LoraBridgeError):
    """An input over its size limit (a request body, an uploaded LoRA, a dataset): HTTP 413."""


class Unauthorized(LoraBridgeError):
    """A request without the credentials its route needs (an API key, a webhook's signature)."""


class NotFound(LoraBridgeError):
    """No record with that id."""


class GenerationRefused(LoraBridgeError):
    """A request that cannot run as asked (a ``strict`` job whose LoRA cannot be applied, a webhook without a secret)."""


class MissingAsset(GenerationRefused):
    """A graph's ``core/ASSET`` reference names no asset this bridge holds (or is malformed)."""

    def __init__(self, message: str, ids: list[str]) -> None:
        super().__init__(message)
        self.ids = ids


class QueueFull(LoraBridgeError):
    """The bounded queue of waiting jobs is full: try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IdempotencyConflict(LoraBridgeError):
    """A request with this ``Idempotency-Key`` is still being answered: retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IdempotencyKeyReuse(LoraBridgeError):
    """An ``Idempotency-Key`` sent again with another request body."""


class HashMismatch(IntegrityError):
    """Uploaded bytes whose blake3 is not the one the client declared."""


class BlobNotFound(NotFound):
    """No bytes with that hash that the caller may mint an asset from."""


class DatabaseUnavailable(LoraBridgeError):
    """The bridge's database cannot be reached (PostgreSQL down or unreachable); nothing was changed."""
