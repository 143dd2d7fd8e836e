"""The real Codex CLI for end-to-end tests: install it once, and a fake Responses API for it.

- `install()` puts a pinned `@openai/codex` from the npm registry into `tests/.cache/` (gitignored)
  once per machine and returns the `codex` executable; it skips when npm or the registry cannot be
  reached, and fails instead under CI=true (CI must run these tests).
- `FakeResponses` is a small ThreadingHTTPServer on 127.0.0.1 that answers `POST /v1/responses`
  with the three SSE events Codex needs for one assistant message (providers.md §7.1), and logs
  every request. Given `spawn`, the root's turn instead spawns a subagent with that task
  (Codex's own `spawn_agent` tool), waits for it (`wait_agent`), then answers; the subagent's
  turn gets the message.
- `codex_home()` writes a CODEX_HOME whose config.toml points Codex at that server.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests import npm_cache

CODEX_VERSION = "0.171.0"
FAKE_KEY_VAR = "FAKE_OPENAI_KEY"


def install(version: str = CODEX_VERSION) -> Path:
    """The `codex` executable of `version`, installed into tests/.cache/ on first use."""
    return npm_cache.install("@openai/codex", version, "codex", "Codex", cache_as="codex")


def codex_home(home: Path, api_url: str) -> Path:
    """$HOME/.codex with a config.toml that sends every model request to `api_url`."""
    directory = home / ".codex"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.toml").write_text(
        '# the user\'s own settings, kept by install-hooks\n'
        'model = "gpt-fake"\nmodel_provider = "fake"\n\n'
        '[model_providers.fake]\nname = "fake"\n'
        f'base_url = "{api_url}/v1"\nwire_api = "responses"\nenv_key = "{FAKE_KEY_VAR}"\n')
    return directory


def codex_env(base: dict, home: Path, directory: Path) -> dict:
    env = {k: v for k, v in base.items() if not k.startswith(("OPENAI", "CODEX"))}
    env.update(HOME=str(home), CODEX_HOME=str(directory), **{FAKE_KEY_VAR: "sk-fake"}, NO_COLOR="1",
               RUST_LOG="error")
    return env


class FakeResponses:
    """A fake OpenAI Responses API: every `POST .../responses` answers one assistant message (or,
    given `spawn`, the root's multi-agent calls first); `bodies` keeps each request's JSON."""

    def __init__(self, reply: str = "hello from fake", spawn: str | None = None):
        self.reply, self.spawn = reply, spawn
        self.bodies: list[dict] = []
        self.released = threading.Event()  # cleared: every model request waits (a turn in progress)
        self.released.set()
        self.log: list[dict] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-responses", daemon=True)

    def __enter__(self) -> "FakeResponses":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def requests(self, suffix: str = "") -> list[dict]:
        with self._lock:
            return [r for r in self.log if r["path"].split("?")[0].endswith(suffix)]

    def _handler_class(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args) -> None:  # noqa: A002 - signature from base
                pass

            def _send(self, status: int, data: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                with api._lock:
                    api.log.append({"method": "GET", "path": self.path})
                self._send(200, json.dumps({"object": "list", "data": []}).encode())

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with api._lock:
                    api.log.append({"method": "POST", "path": self.path, "size": len(raw)})
                if not self.path.split("?")[0].endswith("/responses"):
                    self._send(404, b'{"error": {"message": "not here"}}')
                    return
                n = len(api.requests("/responses"))
                body = _json_object(raw)
                with api._lock:
                    api.bodies.append(body)
                api.released.wait(120)
                events = [
                    {"type": "response.created", "response": {"id": f"resp_{n}"}},
                    {"type": "response.output_item.done", "item": api.answer(body, n)},
                    {"type": "response.completed",
                     "response": {"id": f"resp_{n}", "usage": {
                         "input_tokens": 1, "input_tokens_details": None, "output_tokens": 1,
                         "output_tokens_details": None, "total_tokens": 2}}},
                ]
                body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()
                self._send(200, body, "text/event-stream")

        return Handler

    def answer(self, body: dict, n: int) -> dict:
        """The output item for one model request: a message, or the root's next multi-agent call."""
        call = self._root_call(body) if self.spawn else None
        if call is None:
            return {"type": "message", "role": "assistant", "id": f"msg_{n}",
                    "content": [{"type": "output_text", "text": self.reply}]}
        name, arguments = call
        return {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "namespace": "multi_agent_v1",
                "name": name, "arguments": json.dumps(arguments)}

    def _root_call(self, body: dict):
        meta = json.loads((body.get("client_metadata") or {}).get("x-codex-turn-metadata") or "{}")
        if meta.get("thread_source") != "user":
            return None  # the subagent's own turn (its thread_source is "subagent")
        outputs = [i for i in body.get("input", []) if i.get("type") == "function_call_output"]
        if not outputs:
            return "spawn_agent", {"message": self.spawn}
        if len(outputs) == 1:
            return "wait_agent", {"targets": [_agent_id(outputs[0])], "timeout_ms": 120000}
        return None


def _json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _agent_id(output: dict) -> str:
    """spawn_agent's result names the new agent."""
    text = output.get("output")
    text = text if isinstance(text, str) else json.dumps(text)
    try:
        return json.loads(text)["agent_id"]
    except (ValueError, KeyError, TypeError):
        return text
