"""The OpenAPI schema of one running service: the static request models plus what only the service knows.

Pydantic models state the fixed rules (required fields, minimum lengths, ``oneOf``); this module adds the
limits of the running service (items per request, characters per text, ``k``, vector and embedding
dimensions, the served modalities and index names) and drops what it does not serve, so that every request
the schema admits is one the service accepts, and every one it refuses breaks a rule the schema states.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from hsrl_service.runtime import Service
from hsrl_service.tokens import token_id_rule

__all__ = ["install_contract", "service_schema"]

NOT_ALL_ZEROS = {"contains": {"not": {"const": 0}}}


def _drop_null_defaults(node: Any) -> None:
    """``default: null`` on non-nullable fields only means "may be left out": say nothing instead."""
    if isinstance(node, dict):
        if node.get("default", 0) is None:
            del node["default"]
        for value in node.values():
            _drop_null_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _drop_null_defaults(value)


def _remove_property(model: dict[str, Any], name: str) -> None:
    model["properties"].pop(name, None)
    if "oneOf" in model:
        model["oneOf"] = [branch for branch in model["oneOf"] if branch.get("required") != [name]]
        if len(model["oneOf"]) == 1:
            model["required"] = sorted({*model.get("required", []), *model.pop("oneOf")[0]["required"]})


def _vector_rule(service: Service) -> dict[str, Any]:
    dims = {served.dim for served in service.indexes.values()}
    rule: dict[str, Any] = dict(NOT_ALL_ZEROS)
    if len(dims) == 1:
        (dim,) = dims
        rule.update(minItems=dim, maxItems=dim)
    return rule


def _embedding_request(model: dict[str, Any], service: Service) -> None:
    limits, props = service.limits, model["properties"]
    modalities = sorted({encoder.modality for encoder in service.encoders.values()})
    variants = []
    for variant in props["input"]["anyOf"]:
        items = variant.get("items", {})
        if variant.get("type") == "string":
            variant["maxLength"] = limits.max_text_chars
        elif items.get("type") == "string":
            variant["maxItems"], items["maxLength"] = limits.max_items, limits.max_text_chars
        else:  # token ids: one list of ints, or a list of them
            rule = token_id_rule() if "text" in modalities else None
            if rule is None:
                continue  # no text model or no tiktoken: token ids are not accepted
            inner = items if items.get("type") == "integer" else items["items"]
            inner.update(rule)
            ids = variant if items.get("type") == "integer" else items
            ids["maxItems"] = limits.max_text_chars
            if ids is not variant:
                variant["maxItems"] = limits.max_items
        variants.append(variant)
    props["input"]["anyOf"] = variants
    dims = [encoder.dim for encoder in service.encoders.values()]
    if dims:
        props["dimensions"]["anyOf"][0]["maximum"] = max(dims)
    props["modality"]["anyOf"][0]["enum"] = modalities or ["text"]


def _search_request(model: dict[str, Any], service: Service) -> None:
    limits, props = service.limits, model["properties"]
    if len(service.indexes):
        props["index"]["enum"] = service.indexes.names()
    props["k"]["maximum"] = limits.max_k
    props["text"]["maxLength"] = limits.max_text_chars
    props["vector"].update(_vector_rule(service))
    _drop_unserved(model, service, {"text": "text", "image": "image"})


def _drop_unserved(model: dict[str, Any], service: Service, fields: dict[str, str]) -> None:
    modalities = {encoder.modality for encoder in service.encoders.values()}
    for field, modality in fields.items():
        if modality not in modalities:
            _remove_property(model, field)
    if not modalities:
        model["properties"].pop("model", None)


def _add_request(schemas: dict[str, Any], service: Service) -> None:
    schemas["AddRequest"]["properties"]["items"]["maxItems"] = service.limits.max_items
    item = schemas["AddItem"]
    item["properties"]["text"]["maxLength"] = service.limits.max_text_chars
    item["properties"]["vector"].update(_vector_rule(service))
    _drop_unserved(item, service, {"text": "text"})
    if not any(encoder.modality == "text" for encoder in service.encoders.values()):
        schemas["AddRequest"]["properties"].pop("model", None)


def _index_names(paths: dict[str, Any], service: Service) -> None:
    """Path parameter ``name`` of the index routes: one of the served indexes (others are 404)."""
    names = service.indexes.names()
    for path, operations in paths.items():
        if not path.startswith("/index/") or not names:
            continue
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "name":
                    parameter["schema"]["enum"] = names


def service_schema(app: FastAPI, service: Service) -> dict[str, Any]:
    """The OpenAPI document for ``app`` as ``service`` runs it."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    _index_names(schema.get("paths", {}), service)
    schemas = schema.get("components", {}).get("schemas", {})
    _drop_null_defaults(schemas)
    if "EmbeddingRequest" in schemas:
        _embedding_request(schemas["EmbeddingRequest"], service)
    if "SearchRequest" in schemas:
        _search_request(schemas["SearchRequest"], service)
    if "AddRequest" in schemas:
        _add_request(schemas, service)
    return schema


def install_contract(app: FastAPI, service: Service) -> None:
    """Make ``app.openapi()`` return :func:`service_schema` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = service_schema(app, service)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
