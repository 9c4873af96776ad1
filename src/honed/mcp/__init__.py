"""honed's MCP server (``honed mcp``): the library calls the CLI and the HTTP API make,
as MCP tools and resources, so an assistant can watch and steer a workspace."""

from honed.mcp.server import create_server, run_server

__all__ = ["create_server", "run_server"]
