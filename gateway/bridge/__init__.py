"""The MQTT fabric bridge: topics, envelopes, the on-disk spool, the MQTT client, and the
bridge's jobs on it (publisher, retained statuses, request server and gateway actions, stats)."""
