"""The honest floor of a backfill: only the work any client of the sync API must do.

    python bench/floor_client.py BACKEND_URL API_KEY TRANSCRIPT EXTERNAL_ID

One init, then the transcript in 1 MiB reads: complete lines kept (the rest
carried into the next read), split, each line decoded (strict UTF-8; a line
that is not valid UTF-8 goes out with U+FFFD, as confabd sends it), each
block's lines encoded once as one JSON array with msgspec, its inside fed to
the chunk's zstd -3 stream (one frame per chunk). A chunk is closed when the
next block's exact encoded size would take its body past 14 MiB (confabd's
budget; the server refuses over 16 MiB), then POSTed with http.client on one
keep-alive connection and its `last_synced_line` checked.

Nothing else: no metadata scans, no subagent discovery, no state file, no
retries, no redaction, no progress. Plain http:// on loopback only (the bench
backend). Prints `lines chunks body_bytes` on success; any refusal is an exit 1.

Deliberately stdlib + msgspec + zstandard and nothing of confabd or the bench:
its start-up is part of the floor.
"""

from __future__ import annotations

import http.client
import os
import sys
from urllib.parse import urlsplit

import msgspec
import zstandard

READ_SIZE = 1 << 20
BUDGET = 14 * 1024 * 1024
ZSTD_LEVEL = 3


class Floor:
    def __init__(self, url: str, api_key: str):
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("floor_client: plain http to loopback only")
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                        "User-Agent": "confabd-floor/1 (linux; bench)"}
        self.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self.answer = msgspec.json.Decoder()

    def post(self, path: str, body: bytes, compressed: bool) -> dict:
        headers = dict(self.headers, **({"Content-Encoding": "zstd"} if compressed else {}))
        self.conn.request("POST", path, body=body, headers=headers)
        response = self.conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise SystemExit(f"floor_client: {path}: HTTP {response.status} {payload[:300]!r}")
        return self.answer.decode(payload)


def decode_lines(lines: list[bytes]) -> list[str]:
    try:
        return list(map(bytes.decode, lines))  # strict UTF-8, one C-level pass
    except UnicodeDecodeError:
        return [line.decode("utf-8", "replace") for line in lines]


def blocks(path: str):
    """(lines as str, count) per 1 MiB read: complete lines only."""
    carry = b""
    with open(path, "rb", buffering=0) as f:
        while True:
            data = f.read(READ_SIZE)
            if not data:
                return
            data = carry + data if carry else data
            end = data.rfind(b"\n")
            if end < 0:
                carry = data
                continue
            carry = data[end + 1:]
            lines = data[:end].split(b"\n")
            yield decode_lines(lines), len(lines)


class Chunk:
    """One chunk body being compressed: `{"session_id":…,"lines":[` + block arrays' insides + `]}`."""

    def __init__(self, floor: Floor, head: bytes, first_line: int):
        self.stream = floor.compressor.compressobj()
        self.out = [self.stream.compress(head)]
        self.size = len(head) + 2  # the closing "]}"
        self.first_line = first_line
        self.lines = 0

    def fits(self, inside: bytes) -> bool:
        return self.size + len(inside) + (1 if self.lines else 0) <= BUDGET

    def add(self, inside: bytes, count: int) -> None:
        if self.lines:
            self.out.append(self.stream.compress(b","))
            self.size += 1
        self.out.append(self.stream.compress(inside))
        self.size += len(inside)
        self.lines += count

    def finish(self) -> bytes:
        self.out.append(self.stream.compress(b"]}"))
        self.out.append(self.stream.flush())
        return b"".join(self.out)


def run(url: str, api_key: str, path: str, external_id: str) -> tuple[int, int, int]:
    floor = Floor(url, api_key)
    encode = msgspec.json.Encoder().encode
    file_name = os.path.basename(path)
    init = floor.post("/api/v1/sync/init", encode({
        "external_id": external_id, "transcript_path": path, "provider": "claude-code",
        "metadata": {"cwd": os.path.dirname(path)}}), compressed=False)
    held = init["files"].get(file_name, {}).get("last_synced_line", 0)
    if held:
        raise SystemExit(f"floor_client: the backend already holds {held} lines (a fresh backend is expected)")
    session_id = init["session_id"]

    def head(first_line: int) -> bytes:
        prefix = encode({"session_id": session_id, "file_name": file_name, "file_type": "transcript",
                         "first_line": first_line})
        return prefix[:-1] + b',"lines":['

    sent = chunks = body_bytes = 0

    def send(chunk: Chunk) -> None:
        nonlocal sent, chunks, body_bytes
        body = chunk.finish()
        answer = floor.post("/api/v1/sync/chunk", body, compressed=True)
        expected = chunk.first_line + chunk.lines - 1
        if answer.get("last_synced_line") != expected:
            raise SystemExit(f"floor_client: last_synced_line {answer.get('last_synced_line')}, expected {expected}")
        sent, chunks, body_bytes = expected, chunks + 1, body_bytes + len(body)

    chunk = None
    for lines, count in blocks(path):
        inside = encode(lines)[1:-1]  # the block's lines as one JSON array, without its brackets
        if chunk is not None and not chunk.fits(inside):
            send(chunk)
            chunk = None
        if chunk is None:
            chunk = Chunk(floor, head(sent + 1), sent + 1)
            if not chunk.fits(inside):
                raise SystemExit("floor_client: one 1 MiB block encodes past the chunk budget")
        chunk.add(inside, count)
    if chunk is not None:
        send(chunk)
    floor.conn.close()
    return sent, chunks, body_bytes


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    sent, chunks, body_bytes = run(*argv)
    print(sent, chunks, body_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
