"""The device conformance kit: ``mcp-gateway conformance`` plays the gateway's side of a
line and checks a device against every device-facing rule of the serial spec.

``rules`` is the catalogue, ``probe`` the kit's end of the line, ``checks`` one function per
rule, ``runner`` a run, ``report`` its table, JSON and JUnit, ``cli`` the command.
"""
