"""confabd: ships Claude Code transcripts to a confab backend, exactly once.

Nothing is imported here on purpose: `confabctl hook ...` imports this package
on every Claude Code start and must stay fast.
"""

__version__ = "0.1.0"
