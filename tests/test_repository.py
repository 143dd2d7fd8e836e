"""The repository stands on its own: a fresh clone needs nothing beside it."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO

# Paths of a development machine or of data kept beside the repository: none may appear in a tracked file.
OUTSIDE = re.compile(r"\.\./shared\b|\bshared/(fixtures|spec|design|hooks)\b|/work/(main|shared)\b|/home/[a-z]+/src\b")


def tracked_files() -> list[str]:
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    return [name for name in listing.stdout.decode().split("\0") if name]


def test_no_tracked_file_points_outside_the_repository():
    files = tracked_files()
    assert "README.md" in files, "not run from a git checkout?"
    offenders = []
    for name in files:
        if name == "tests/test_repository.py" or name.startswith("tests/fixtures/"):
            continue
        try:
            text = (REPO / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "tracked files point outside the repository:\n" + "\n".join(offenders)


def test_the_fixtures_the_tests_use_are_in_the_repository():
    from tests.data import FIXTURES, HOOK_INPUT, SESSIONS, TRANSCRIPTS

    tracked = set(tracked_files())
    for directory in (TRANSCRIPTS, HOOK_INPUT, SESSIONS):
        files = [p for p in directory.rglob("*") if p.is_file()]
        assert files, directory
        for path in files:
            assert str(path.relative_to(REPO)) in tracked, f"{path} is not tracked"
    assert (FIXTURES / "README.md").is_file()
