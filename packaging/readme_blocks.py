"""Print one code block of a Markdown file: what test-fresh.sh runs from README.md.

    python3 packaging/readme_blocks.py README.md first          # the file's first code block
    python3 packaging/readme_blocks.py README.md "Quick start"  # the first one after that heading

A block is indented by four spaces (blank lines inside it included) or fenced
with ```; its text is printed as a user would paste it (indent removed). Exit 1
with a message when the heading or the block is not there: the test must not
run nothing and pass.
"""

from __future__ import annotations

import re
import sys
from typing import List, Optional


def after_heading(text: str, heading: str) -> Optional[str]:
    """The text after the first Markdown heading that starts with `heading`, or None."""
    match = re.search(rf"^#+[ \t]*{re.escape(heading)}.*$", text, re.M)
    return text[match.end():] if match else None


def first_block(text: str) -> Optional[str]:
    block: List[str] = []
    fenced = False
    for line in text.splitlines():
        if fenced:
            if line.strip().startswith("```"):
                break
            block.append(line)
        elif not block and line.strip().startswith("```"):
            fenced = True
        elif line.startswith("    ") or (block and not line.strip()):
            block.append(line[4:])
        elif block:
            break
    while block and not block[-1].strip():
        block.pop()
    return "\n".join(block) if block else None


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print("usage: readme_blocks.py FILE first|HEADING", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        text = f.read()
    if argv[1] != "first":
        text = after_heading(text, argv[1])
        if text is None:
            print(f"{argv[0]}: no heading starting with {argv[1]!r}", file=sys.stderr)
            return 1
    block = first_block(text)
    if block is None:
        print(f"{argv[0]}: no code block{'' if argv[1] == 'first' else ' after ' + repr(argv[1])}", file=sys.stderr)
        return 1
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
