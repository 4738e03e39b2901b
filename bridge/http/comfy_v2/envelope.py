"""The Comfy API v2 error envelope: ``{"error": {"code", "message", "details"}}`` with the spec's codes,
chosen from the same exceptions the ``/v1`` table answers (``errors.py``), most specific class first."""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web

from ...errors import (
    BlobNotFound,
    DatabaseUnavailable,
    GenerationRefused,
    HashMismatch,
    IdempotencyConflict,
    IdempotencyKeyReuse,
    LoraBridgeError,
    MissingAsset,
    NotFound,
    PodUnavailable,
    QueueFull,
    RequestInvalid,
    TooLarge,
    Unauthorized,
)
from ...graphs.convert import WorkflowError
from ...graphs.lora_insertion import InsertionError
from ...graphs.templates import TemplateError
from ...graphs.validate import GraphInvalid
from ...lorafiles.header import InvalidLoraFile
from ...lorafiles.validate import LoraValidationError
from ...pack_protocol import ProtocolError

log = logging.getLogger("lora_bridge.service")


class WorkflowFormatUi(RequestInvalid):
    """A graph-editor (UI-format) workflow sent where the API format is required."""


CODES: dict[type[BaseException], tuple[int, str]] = {
    TooLarge: (413, "too_large"),
    WorkflowFormatUi: (422, "workflow_format_ui"),
    RequestInvalid: (400, "invalid_request"),
    ProtocolError: (400, "invalid_request"),
    Unauthorized: (401, "unauthorized"),
    BlobNotFound: (404, "blob_not_found"),
    NotFound: (404, "not_found"),
    HashMismatch: (409, "hash_mismatch"),
    IdempotencyConflict: (409, "idempotency_conflict"),
    IdempotencyKeyReuse: (422, "idempotency_key_reuse"),
    MissingAsset: (422, "missing_asset"),
    GraphInvalid: (422, "invalid_workflow"),
    WorkflowError: (422, "invalid_workflow"),
    TemplateError: (422, "invalid_workflow"),
    InsertionError: (422, "invalid_workflow"),
    GenerationRefused: (422, "invalid_workflow"),
    LoraValidationError: (422, "invalid_asset"),
    InvalidLoraFile: (422, "invalid_asset"),
    QueueFull: (429, "queue_full"),
    PodUnavailable: (503, "upstream_unreachable"),
    DatabaseUnavailable: (503, "database_unavailable"),
    LoraBridgeError: (422, "invalid_request"),
}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
_NODE_ERROR = re.compile(r"^node (?P<node>[^ ]+)(?: \((?P<cls>[^)]*)\))?(?: input '(?P<input>[^']*)')?: (?P<message>.*)$")


def envelope(status: int, code: str, message: str, details: dict[str, Any] | None = None,
             retry_after: int | None = None) -> web.Response:
    response = web.json_response({"error": {"code": code, "message": message, "details": details}}, status=status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def node_errors(errors: list[str]) -> dict[str, list[dict[str, Any]]]:
    """A graph's problems per node, as the spec's ``details.node_errors`` (``{node: [{field, reason}]}``)."""
    by_node: dict[str, list[dict[str, Any]]] = {}
    for line in errors:
        m = _NODE_ERROR.match(line)
        node = m["node"] if m else "graph"
        by_node.setdefault(node, []).append({"field": m["input"] if m else None, "class_type": m["cls"] if m else None,
                                             "reason": m["message"] if m else line})
    return by_node


def answer(exc: BaseException) -> web.Response:
    """The v2 answer for ``exc`` (aiohttp's own HTTP errors keep their status)."""
    if isinstance(exc, web.HTTPException):
        return envelope(exc.status, HTTP_CODES.get(exc.status, "http"),
                        "request body too large" if exc.status == 413 else (exc.text or exc.reason))
    status, code = next((CODES[cls] for cls in type(exc).__mro__ if cls in CODES), (500, "internal"))
    if code == "internal":
        log.error("internal error answering a Comfy API v2 request", exc_info=exc)
        return envelope(500, code, f"internal error ({exc.__class__.__name__}); see the service log")
    details: dict[str, Any] | None = None
    if isinstance(exc, GraphInvalid):
        details = {"node_errors": node_errors(exc.errors)}
    elif isinstance(exc, MissingAsset):
        details = {"missing_ids": exc.ids}
    retry = exc.retry_after if isinstance(exc, (QueueFull, IdempotencyConflict)) else None
    return envelope(status, code, str(exc).strip("'\"") or exc.__class__.__name__, details, retry)
