"""A fresh clone on a fresh Debian 12 runs the README's first command and its Quick start.

`packaging/test-fresh.sh` (root: systemd-nspawn, no network in the container)
debootstraps a minimal bookworm once (cached in tests/.cache/rootfs/), clones
HEAD into two ordinary users' homes and runs, read from README.md at test time,
the first code block (`sh packaging/install-user.sh`) as one and the Quick
start block verbatim as the other; pip installs from a wheelhouse built on the
host. About 20 s warm, 90 s cold (debootstrap from the Debian mirror).
Not root: skipped, and said so; under CI=true (which runs as root) a run that
cannot happen is a failure. CONFABD_TEST_FRESH=0 skips it.

The block extraction (packaging/readme_blocks.py) is tested here too, on any machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_root_for

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "packaging"
IN_CI = os.environ.get("CI", "").lower() == "true"

sys.path.insert(0, str(PKG))
import readme_blocks  # noqa: E402 - packaging/ is not a package


def blocks(path: Path, which: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PKG / "readme_blocks.py"), str(path), which],
                          capture_output=True, text=True, timeout=30)


def test_blocks_indented_and_fenced(tmp_path):
    md = tmp_path / "README.md"
    md.write_text("# x\n\nText.\n\n    sh first.sh\n\nMore.\n\n## Quick start, by hand\n\nIntro:\n\n"
                  "    one \\\n        continued\n\n    # after a blank line: the same block\n    two\n\n"
                  "Then.\n\n    not this one\n\n## Other\n\n```sh\nfenced\n```\n")
    assert blocks(md, "first").stdout == "sh first.sh\n"
    assert blocks(md, "Quick start").stdout == \
        "one \\\n    continued\n\n# after a blank line: the same block\ntwo\n"
    assert blocks(md, "Other").stdout == "fenced\n"


def test_blocks_missing_is_an_error(tmp_path):
    md = tmp_path / "README.md"
    md.write_text("# x\n\nno code\n\n## Quick start\n\nnothing here either\n")
    for which, message in (("first", "no code block"), ("Quick start", "no code block after 'Quick start'"),
                           ("Install", "no heading starting with 'Install'")):
        r = blocks(md, which)
        assert r.returncode == 1 and r.stdout == "" and message in r.stderr, (which, r.stderr)


def test_the_readme_has_what_the_fresh_machine_test_runs():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme_blocks.first_block(text) == "sh packaging/install-user.sh"
    quick = readme_blocks.first_block(readme_blocks.after_heading(text, "Quick start"))
    assert "pip install ." in quick and "confabctl archive list" in quick


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fresh_debian_runs_the_readme():
    """packaging/test-fresh.sh: install-user.sh and the Quick start, verbatim, on a fresh Debian 12."""
    require_root_for("the fresh-machine test (systemd-nspawn)", "CONFABD_TEST_FRESH", "sudo make -C packaging fresh")
    proc = subprocess.run([str(PKG / "test-fresh.sh")], capture_output=True, text=True, timeout=900)
    output = proc.stdout[-10000:] + proc.stderr[-3000:]
    if proc.returncode == 2:  # could not run: no debootstrap/nspawn, no mirror, no PyPI for the wheelhouse
        if IN_CI:
            pytest.fail("the fresh-machine test could not run:\n" + output)
        pytest.skip("the fresh-machine test could not run: " + (proc.stderr.strip().splitlines() or ["?"])[-1])
    assert proc.returncode == 0, output
    assert "fresh-machine test: all checks passed" in proc.stdout
