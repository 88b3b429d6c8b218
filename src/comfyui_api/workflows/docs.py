"""A markdown table of a workflow's inputs, for its route's description in the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _type_name(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "enum"
    if "anyOf" in schema:
        return " \\| ".join(_type_name(option) for option in schema["anyOf"])
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"array of {_type_name(schema.get('items', {}))}"
    return str(schema.get("type", "any"))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def inputs_table(model: type[BaseModel]) -> str:
    """Field | Type | Description | Default, with **Required** where a field has no default."""
    properties = model.model_json_schema().get("properties", {})
    rows = ["| Field | Type | Description | Default |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        schema = properties.get(field.alias or name, {})
        if field.is_required():
            default = "**Required**"
        elif field.default_factory is not None:
            default = "(computed)"
        elif field.default is PydanticUndefined or field.default is None:
            default = ""
        else:
            default = f"`{field.default}`"
        description = field.description or schema.get("description", "")
        rows.append(f"| `{name}` | {_cell(_type_name(schema))} | {_cell(description)} | {_cell(default)} |")
    return "\n".join(rows)
