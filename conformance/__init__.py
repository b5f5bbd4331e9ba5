"""A conformance suite that judges any EST (RFC 7030, RFC 8951) or SCEP (RFC 8894) server on the wire.

The suite is independent of the server's and clients' code by design: it builds its own requests
and parses replies itself (``scepmsg``, ``cmcmsg``, ``csrtemplate``), so code that looks like
``est/`` or ``scep/`` here is deliberate, and a bug shared by both cannot hide from it.
Each suite is a registry (``est_suite``, ``scep_suite``) of check groups, one module per group
of RFC sections (``est_checks_*``, ``scep_checks_*``), sharing a context module (``est_common``,
``scep_common``).
"""
