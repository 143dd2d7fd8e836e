"""Where the test data lives: inside the repository, so a fresh clone needs nothing beside it.

tests/fixtures/README.md says what each file is and where it was captured.
"""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TRANSCRIPTS = FIXTURES / "transcripts"
HOOK_INPUT = FIXTURES / "hook-input"
SESSIONS = FIXTURES / "sessions"
CURSOR = FIXTURES / "cursor"
