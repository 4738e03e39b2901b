"""One table from exceptions to HTTP answers: ``{"error": {"type", "message"}}`` with a status.

Looked up along the exception's class hierarchy, most specific first. An exception that is
not in the table is a bug: it is logged with its traceback and answered 500 ``internal``
(no input is meant to reach that path; the fuzz tests look for it).
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..errors import (
    ConfigError,
    DatabaseUnavailable,
    FetchError,
    GenerationRefused,
    IntegrityError,
    LoraBridgeError,
    MissingAsset,
    NotFound,
    PodError,
    PodUnavailable,
    QueueFull,
    RequestInvalid,
    TooLarge,
    Unauthorized,
)
from ..graphs.convert import WorkflowError
from ..graphs.lora_insertion import InsertionError
from ..graphs.templates import TemplateError
from ..graphs.validate import GraphInvalid
from ..lorafiles.header import InvalidLoraFile
from ..lorafiles.sources import SourceError, SourceRefused
from ..lorafiles.validate import LoraValidationError
from ..pack_protocol import ProtocolError, UnencodableText
from ..training.dataset import DatasetInvalid

log = logging.getLogger("lora_bridge.service")

ERROR_TABLE: dict[type[BaseException], tuple[int, str]] = {
    TooLarge: (413, "too_large"),
    UnencodableText: (422, "invalid_text"),
    RequestInvalid: (400, "invalid_request"),
    ProtocolError: (400, "invalid_request"),
    TemplateError: (400, "invalid_params"),
    WorkflowError: (400, "invalid_workflow"),
    LoraValidationError: (400, "invalid_lora"),
    SourceRefused: (400, "source_refused"),
    Unauthorized: (401, "unauthorized"),
    NotFound: (404, "not_found"),
    QueueFull: (429, "queue_full"),
    MissingAsset: (422, "missing_asset"),
    GenerationRefused: (422, "refused"),
    DatasetInvalid: (422, "invalid_dataset"),
    InsertionError: (422, "lora_refused"),
    GraphInvalid: (422, "invalid_graph"),
    InvalidLoraFile: (422, "invalid_lora_file"),
    IntegrityError: (422, "integrity"),
    SourceError: (422, "source_unusable"),
    FetchError: (502, "fetch_failed"),
    PodUnavailable: (503, "pod_unavailable"),
    DatabaseUnavailable: (503, "database_unavailable"),
    PodError: (502, "pod_error"),
    ConfigError: (500, "configuration"),
    LoraBridgeError: (422, "refused"),
}
HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def error_response(status: int, type: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": type, "message": message}}, status=status)


def classify(exc: BaseException) -> tuple[int, str]:
    """(status, type) for an exception, from the most specific class in the table; (500, internal) if none."""
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return 500, "internal"


def answer(exc: BaseException) -> web.Response:
    """The HTTP answer for ``exc`` (aiohttp's own HTTP errors keep their status)."""
    if isinstance(exc, web.HTTPException):
        return error_response(exc.status, HTTP_TYPES.get(exc.status, "http"), (exc.text or exc.reason) if exc.status != 413
                              else "request body too large")
    status, type = classify(exc)
    if type == "internal":
        log.error("internal error answering a request", exc_info=exc)
        return error_response(500, type, f"internal error ({exc.__class__.__name__}); see the service log")
    response = error_response(status, type, str(exc).strip("'\"") or exc.__class__.__name__)
    if isinstance(exc, QueueFull):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response
