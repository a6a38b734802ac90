"""Request bodies that routes parse themselves (specs, gate policies), declared in OpenAPI.

Such a route takes the raw JSON and validates it with the spec's own rules, so FastAPI does not
see the model; its schema goes into the operation with ``openapi_extra``. Pydantic's schema keeps
nested models under a local ``$defs`` with ``#/$defs/...`` references, which in an OpenAPI
document point at the document root, where nothing is: they are inlined here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["json_body"]


def json_body(
    model: type[BaseModel], *, extra_properties: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``openapi_extra`` declaring a required JSON body of ``model``'s schema.

    Args:
        model: The spec the route validates the body with.
        extra_properties: Properties the route reads before the spec (``job_id``), added to the
            schema; a required field they can stand in for becomes "this or that".
    """
    schema = _inline(model.model_json_schema())
    for name, prop in (extra_properties or {}).items():
        schema["properties"][name] = prop
        stands_for = prop.pop("x-instead-of", None)
        if stands_for in schema.get("required", []):
            schema["required"].remove(stands_for)
            schema["anyOf"] = [{"required": [stands_for]}, {"required": [name]}]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**resolve(defs[ref.removeprefix("#/$defs/")]), **resolve(rest)}
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
