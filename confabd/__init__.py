"""confabd: ships Claude Code transcripts to a confab backend, exactly once.

The flow, one way (docs/ARCHITECTURE.md has the full map):

    hook / confabctl (ctl) -> client -> master (master: loop; control_server:
    transport; commands: requests; sessions: each session's life) -> worker
    -> engine (transcript, discovery, redact) -> sinks (http, archive)

User mode and system mode differ in tenancy.py alone (with privileges.py
for doing things as a user).

Nothing is imported here on purpose: `confabctl hook ...` imports this package
on every Claude Code start and must stay fast.
"""

__version__ = "0.1.0"
