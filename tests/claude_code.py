"""The real Claude Code binary for end-to-end tests: install it once, and a fake Messages API for it.

- `install()` puts a pinned `@anthropic-ai/claude-code` from the npm registry into
  `tests/.cache/` (gitignored) once per machine and returns the `claude` executable;
  it calls `pytest.skip` when npm is missing or the install fails.
- `FakeAnthropic` is a small ThreadingHTTPServer on 127.0.0.1 that answers
  `POST /v1/messages` (SSE when `stream` is true, plain JSON otherwise) with a
  short text reply, and anything else with a harmless answer; it logs every request.
- `claude_env()` is the environment that keeps Claude Code offline and non-interactive.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional

import pytest

from tests import npm_cache

CLAUDE_CODE_VERSION = "2.1.330"


def install(version: str = CLAUDE_CODE_VERSION) -> Path:
    """The `claude` executable of `version`, installed into tests/.cache/ on first use."""
    return npm_cache.install("@anthropic-ai/claude-code", version, "claude", "Claude Code", cache_as="claude-code",
                             env={"DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"})


def project_dir_name(cwd: str) -> str:
    """Where Claude Code keeps a cwd's transcripts: every non-alphanumeric character becomes '-'."""
    return re.sub(r"[^A-Za-z0-9]", "-", cwd)


def claude_env(base: dict, home: Path, api_url: str) -> dict:
    """`base` (the confabd test environment) plus what keeps Claude Code offline and quiet."""
    env = {k: v for k, v in base.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=api_url,
        ANTHROPIC_API_KEY="sk-ant-test-" + "0" * 32,
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_BUG_COMMAND="1",
        CLAUDE_CODE_DISABLE_TERMINAL_TITLE="1",
        CLAUDE_CODE_IDE_SKIP_AUTO_INSTALL="1",
        TERM="xterm-256color",
        NO_COLOR="1",
    )
    return env


def write_claude_config(home: Path, trusted: tuple = ()) -> None:
    """~/.claude.json that answers the first-run questions (theme, onboarding, API key, folder trust)."""
    key = "sk-ant-test-" + "0" * 32
    cfg = {
        "hasCompletedOnboarding": True,
        "theme": "dark",
        "numStartups": 1,
        "autoUpdates": False,
        "customApiKeyResponses": {"approved": [key[-20:]], "rejected": []},
        "bypassPermissionsModeAccepted": True,
        "projects": {str(d): {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True,
                              "allowedTools": []} for d in trusted},
    }
    (home / ".claude.json").write_text(json.dumps(cfg))


class FakeAnthropic:
    """A fake Anthropic API: `POST /v1/messages` answers `reply`; every request is logged."""

    def __init__(self, reply: str = "Hello! How can I help you today?"):
        self.reply = reply
        # One tool call to make, e.g. {"name": "Bash", "input": {"command": "git commit -m x"}}: the first
        # request offering that tool gets it (once `tool_use_ready()` is true), every other the text reply.
        self.tool_use: Optional[dict] = None
        self.tool_use_ready: Callable[[], bool] = lambda: True
        self.bodies: list[dict] = []  # every /v1/messages request body, in order
        self.log: list[dict] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-anthropic", daemon=True)

    def __enter__(self) -> "FakeAnthropic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def requests(self, path_prefix: str = "") -> list[dict]:
        with self._lock:
            return [r for r in self.log if r["path"].startswith(path_prefix)]

    def _record(self, entry: dict) -> None:
        with self._lock:
            self.log.append(entry)

    def _handler_class(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args) -> None:  # noqa: A002 - signature from base
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", "req_" + uuid.uuid4().hex)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._body()
                api._record({"method": "GET", "path": self.path})
                self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": "not here"}})

            do_HEAD = do_DELETE = do_PUT = do_PATCH = do_GET

            def do_POST(self) -> None:
                raw = self._body()
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                path = self.path.split("?", 1)[0]
                api._record({"method": "POST", "path": self.path, "stream": body.get("stream"),
                             "model": body.get("model"), "time": time.time()})
                if path == "/v1/messages/count_tokens":
                    self._send(200, {"input_tokens": 10})
                elif path == "/v1/messages":
                    self._messages(body)
                else:
                    self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": "not here"}})

            def _messages(self, body: dict) -> None:
                model = body.get("model") or "claude-test"
                msg_id = "msg_" + uuid.uuid4().hex[:24]
                usage = {"input_tokens": 10, "output_tokens": 8, "cache_creation_input_tokens": 0,
                         "cache_read_input_tokens": 0}
                with api._lock:
                    api.bodies.append(body)
                    call = api.tool_use
                    offered = call and any(t.get("name") == call["name"] for t in body.get("tools") or ())
                    if offered:
                        api.tool_use = None
                if offered:
                    self._tool_use(body, model, msg_id, usage, call)
                    return
                text = api.reply
                if not body.get("stream"):
                    self._send(200, {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                                     "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                     "stop_sequence": None, "usage": usage})
                    return
                words = re.findall(r"\S+\s*", text) or [text]
                events = [
                    ("message_start", {"type": "message_start", "message": {
                        "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
                        "stop_reason": None, "stop_sequence": None,
                        "usage": dict(usage, output_tokens=1)}}),
                    ("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
                    *[("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": w}}) for w in words],
                    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                    ("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                       "usage": {"output_tokens": 8}}),
                    ("message_stop", {"type": "message_stop"}),
                ]
                data = b"".join(f"event: {name}\ndata: {json.dumps(ev)}\n\n".encode() for name, ev in events)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", "req_" + uuid.uuid4().hex)
                self.end_headers()
                self.wfile.write(data)

            def _tool_use(self, body: dict, model: str, msg_id: str, usage: dict, call: dict) -> None:
                deadline = time.monotonic() + 30
                while not api.tool_use_ready() and time.monotonic() < deadline:
                    time.sleep(0.02)
                block = {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": call["name"],
                         "input": call["input"]}
                if not body.get("stream"):
                    self._send(200, {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                                     "content": [block], "stop_reason": "tool_use", "stop_sequence": None,
                                     "usage": usage})
                    return
                events = [
                    ("message_start", {"type": "message_start", "message": {
                        "id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
                        "stop_reason": None, "stop_sequence": None, "usage": dict(usage, output_tokens=1)}}),
                    ("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": dict(block, input={})}),
                    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "input_json_delta",
                                                       "partial_json": json.dumps(call["input"])}}),
                    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                    ("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                       "usage": {"output_tokens": 8}}),
                    ("message_stop", {"type": "message_stop"}),
                ]
                data = b"".join(f"event: {name}\ndata: {json.dumps(ev)}\n\n".encode() for name, ev in events)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", "req_" + uuid.uuid4().hex)
                self.end_headers()
                self.wfile.write(data)

        return Handler
