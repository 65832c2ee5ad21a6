"""``list_environments``: the workspace's online environments, by name."""

from __future__ import annotations

import json

from sdk.tools.arguments import NoArguments, takes
from sdk.tools.base import ToolContext, ToolResult


@takes(NoArguments)
async def list_environments(ctx: ToolContext, args: NoArguments) -> ToolResult:
    try:
        environments = await ctx.resolver.llm_view()
    except Exception as error:
        return ToolResult.error(f"list_environments: {error} (executor list temporarily unavailable; retry)")
    return ToolResult.ok(json.dumps(environments), {"environments": environments})
