"""The Textual dashboard of the MCP fabric (an MQTT client; built on the bridge's topics)."""
