"""Tool arguments as typed models: one pydantic model per tool gives both the ``inputSchema`` the
tool advertises (SDK REST and env-mcp alike) and the check every call's arguments go through.

``@takes(Model)`` turns ``async def tool(ctx, args: Model) -> ToolResult`` into the shared tool
shape ``async (ToolContext, arguments: dict) -> ToolResult``: arguments that do not fit the model
come back as an ``is_error`` result naming the field, never as an exception.
"""

from __future__ import annotations

import base64
import binascii
import logging
import posixpath
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Self, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from bridge.client import BridgeError
from sdk.resolver import ResolveError
from sdk.tools.base import JSON, ToolContext, ToolError, ToolResult, uri_path

log = logging.getLogger(__name__)


class _Schema(GenerateJsonSchema):
    """The schemas as the tools advertised them when they were written by hand: no titles, no
    ``default`` keys (each default is stated in the field's description), an optional field as its
    plain type rather than ``anyOf`` with null, and ``required`` always present."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def generate(self, schema: core_schema.CoreSchema, mode: Any = "validation") -> JsonSchemaValue:
        generated = super().generate(schema, mode)
        generated.pop("title", None)
        generated.setdefault("required", [])
        return generated


class Arguments(BaseModel):
    """A tool's arguments. Strict types (``"5"`` is not an integer, ``1`` not a boolean); a null is
    an absent argument. Unknown keys are ignored, though the schema says ``additionalProperties:
    false`` to models: the REST surface adds the path's ``environment_id`` to every call."""

    model_config = ConfigDict(strict=True, frozen=True, json_schema_extra={"additionalProperties": False})

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @classmethod
    def input_schema(cls) -> JSON:
        return cls.model_json_schema(schema_generator=_Schema)

    @classmethod
    def parse(cls, arguments: JSON) -> Self:
        try:
            return cls.model_validate(arguments)
        except ValidationError as error:
            problems = [_describe(problem) for problem in error.errors()]
        if any(problem.endswith("environment_id is required") for problem in problems):
            problems[-1] += " (call list_environments to see the environment names)"
        raise ToolError("invalid arguments: " + "; ".join(problems))


def _describe(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"{field} is required"
    # Our own validators' messages, without pydantic's "Value error, " prefix.
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    return f"{field}: {message}" if field else message


# --- field types ---------------------------------------------------------------------------------


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _integral(value: Any) -> Any:
    """A JSON number with no fraction (``5.0``) is an integer."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _absolute(value: str) -> str:
    """An absolute path (or a ``file://`` URI) as the plain, normalised path."""
    path = (uri_path(value) or "") if value.startswith("file://") else value
    if not path.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    return posixpath.normpath(path)


def at_most(limit: int) -> AfterValidator:
    """An upper bound that is checked but, like before the schemas were generated, not advertised."""

    def check(value: int) -> int:
        if value > limit:
            raise ValueError(f"Input should be less than or equal to {limit}")
        return value

    return AfterValidator(check)


def _base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("is not valid base64") from None
    return value


MAX_TIMEOUT_MS = 24 * 3600 * 1000

Text = Annotated[str, AfterValidator(_non_empty)]
# Put after a bound (``Field(ge=…)``), so the bound stays on the integer and is advertised as ``minimum``.
INTEGRAL = BeforeValidator(_integral)
Count = Annotated[int, Field(ge=0), INTEGRAL]
TimeoutMs = Annotated[int, Field(ge=1), INTEGRAL, at_most(MAX_TIMEOUT_MS)]
AbsolutePath = Annotated[str, AfterValidator(_absolute)]
Base64 = Annotated[str, AfterValidator(_base64)]
# An empty cwd is no cwd.
Cwd = Annotated[AbsolutePath | None, BeforeValidator(lambda value: None if value == "" else value)]


def environment_field(what: str = "Environment") -> Any:
    return Field(description=f"{what} name, as listed by list_environments.")


EnvironmentId = Annotated[Text, environment_field()]
Argv = Annotated[list[str], Field(min_length=1, description='argv, e.g. ["ls", "-la"].')]
CwdField = Annotated[Cwd, Field(description="Absolute working directory; defaults to the home directory.")]
EnvVars = Annotated[dict[str, str], Field(description="Environment variables, on top of PATH, HOME and LANG defaults.")]
SessionId = Annotated[Text, Field(description="The session_id exec_command returned.")]
SessionEnvironment = Annotated[
    Text | None, Field(description="Optional: the session's environment name, checked if given.")
]


class NoArguments(Arguments):
    pass


# --- tools -----------------------------------------------------------------------------------------

A = TypeVar("A", bound=Arguments)


@dataclass(frozen=True)
class TypedTool(Generic[A]):
    """A tool with its arguments model; called with the raw arguments, like every tool."""

    model: type[A]
    function: Callable[[ToolContext, A], Awaitable[ToolResult]]

    async def __call__(self, ctx: ToolContext, arguments: JSON) -> ToolResult:
        """Every failure the model can act on is an error result (see ``sdk.tools.base``)."""
        try:
            return await self.function(ctx, self.model.parse(arguments))
        except (ToolError, ResolveError, BridgeError) as error:
            return ToolResult.error(str(error))
        except Exception as error:
            name = self.function.__name__
            log.exception("tool %s failed", name)
            return ToolResult.error(f"{name}: internal error: {type(error).__name__}: {error}")


def takes(model: type[A]) -> Callable[[Callable[[ToolContext, A], Awaitable[ToolResult]]], TypedTool[A]]:
    def typed(function: Callable[[ToolContext, A], Awaitable[ToolResult]]) -> TypedTool[A]:
        return TypedTool(model, function)

    return typed
