"""The MQTT fabric bridge: topics, envelopes, the on-disk spool and the MQTT client."""
