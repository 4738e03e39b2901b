"""The exception hierarchy of comfyui-lora-bridge: catch ``LoraBridgeError`` for all of them."""

from __future__ import annotations


class LoraBridgeError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(LoraBridgeError):
    """The environment or configuration is missing something or is inconsistent."""


class PodError(LoraBridgeError):
    """A ComfyUI pod could not be started, reached, or did not answer as expected."""


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


class JobFailed(PodError):
    """A graph was accepted but failed (or was interrupted) while running on the pod."""

    def __init__(self, message: str, node_id: str | None = None, node_type: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.node_type = node_type
