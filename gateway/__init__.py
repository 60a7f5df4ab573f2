"""mcp-gateway: serial and embedded MCP devices on an MQTT fabric."""

__version__ = "0.1.0"
