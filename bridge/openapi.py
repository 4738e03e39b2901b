"""OpenAPI 3.1 documents built from the same pydantic models that parse the requests.

Both HTTP surfaces (the bridge service and the pack's pod routes) describe each route once as
a ``RouteSpec``; the document is generated from those specs, never kept by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

ERROR_SCHEMA = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {"type": "object", "required": ["type", "message"], "additionalProperties": False,
                             "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}},
}


@dataclass(frozen=True)
class RouteSpec:
    """One route: method, path (``{name}`` parameters), summary, and the models of its inputs."""

    method: str
    path: str
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: type[BaseModel] | None = None
    headers: type[BaseModel] | None = None
    responses: dict[int, str] = field(default_factory=lambda: {200: "OK"})
    auth: bool = True
    fleet: bool = False  # pods may call it too: LORA_BRIDGE_REGISTRATION_TOKEN is accepted beside the API keys
    content_type: str = "application/json"


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _parameters(model: type[BaseModel], where: str) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop.pop("title", None)
        params.append({"name": name, "in": where, "required": where == "path" or name in required,
                       "schema": prop})
    return params


def openapi_document(title: str, version: str, routes: list[RouteSpec], bearer: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``: parameters, bodies and error responses from the models."""
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {"summary": route.summary, "operationId": f"{route.method.lower()}{route.path}"}
        params: list[dict[str, Any]] = []
        for model, where in ((route.path_params, "path"), (route.query, "query"), (route.headers, "header")):
            if model is not None:
                params += _parameters(model, where)
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {"required": True, "content": {route.content_type: {"schema": _schema(route.body, components)}}}
        responses: dict[str, Any] = {str(code): {"description": text} for code, text in route.responses.items()}
        for code, text in ((400, "invalid request"), *(((401, "missing or wrong key"),) if route.auth and bearer else ())):
            responses.setdefault(str(code), {"description": text})
        for code, resp in responses.items():
            if code.startswith(("4", "5")):
                resp["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        op["responses"] = responses
        if not route.auth:
            op["security"] = []
        paths.setdefault(route.path, {})[route.method.lower()] = op
    doc: dict[str, Any] = {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths,
                           "components": {"schemas": components}}
    if bearer:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
