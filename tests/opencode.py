"""The real OpenCode CLI for end-to-end tests: install it once, and a fake chat-completions API for it.

- `install()` puts a pinned `opencode-ai` from npm into `tests/.cache/` once per machine and returns
  the `opencode` executable (skipped when npm cannot reach the registry; a failure under CI=true).
- `FakeChat` answers `POST /v1/chat/completions` (SSE) with one assistant message (providers.md §7.2);
  given a `task`, it first calls OpenCode's own `task` tool with it (a child session, a subagent) and
  answers the child's prompt and the tool's result with the message. It keeps every request body.
- `opencode_env()` isolates HOME and the XDG dirs and points OpenCode at the fake server.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests import npm_cache

OPENCODE_VERSION = "1.18.33"


def install(version: str = OPENCODE_VERSION) -> Path:
    return npm_cache.install("opencode-ai", version, "opencode", "OpenCode", cache_as="opencode")


def opencode_env(base: dict, root: Path, api_url: str) -> dict:
    env = {k: v for k, v in base.items() if not k.startswith(("OPENCODE", "XDG_"))}
    dirs = {name: root / name.lower() for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME",
                                                   "XDG_STATE_HOME")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    env.update({k: str(v) for k, v in dirs.items()}, OPENCODE_DISABLE_AUTOUPDATE="1",
               OPENCODE_DISABLE_MODELS_FETCH="1", NO_COLOR="1")
    config = dirs["XDG_CONFIG_HOME"] / "opencode"
    config.mkdir(exist_ok=True)
    (config / "opencode.json").write_text(json.dumps({
        "autoupdate": False, "share": "disabled",
        "provider": {"fake": {"npm": "@ai-sdk/openai-compatible", "name": "Fake",
                              "options": {"baseURL": f"{api_url}/v1", "apiKey": "sk-fake"},
                              "models": {"fake-model": {"name": "Fake Model"}}}},
        "model": "fake/fake-model", "small_model": "fake/fake-model"}))
    return env


class FakeChat:
    def __init__(self, reply: str = "hello from fake", task: dict | None = None,
                 hold: threading.Event | None = None):
        self.reply, self.task = reply, task
        self.hold = hold  # set: every completion waits for it (an agent caught mid-turn)
        self.held = threading.Event()  # a completion is being held
        self.log: list[str] = []
        self.bodies: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body: bytes, ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                api.log.append("GET " + self.path)
                self._send(200, json.dumps({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}).encode())

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.log.append("POST " + self.path)
                if not self.path.endswith("/chat/completions"):
                    self._send(404, b"{}")
                    return
                body = json.loads(raw)
                api.bodies.append(body)
                if api.hold is not None and not api.hold.is_set():
                    api.held.set()
                    api.hold.wait(180)
                base = {"id": f"c{len(api.bodies)}", "object": "chat.completion.chunk", "created": 0,
                        "model": "fake-model"}
                if api.spawns(body):
                    call = {"index": 0, "id": f"call_{len(api.bodies)}", "type": "function",
                            "function": {"name": "task", "arguments": json.dumps(api.task)}}
                    delta, finish = {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
                else:
                    delta, finish = {"role": "assistant", "content": api.reply}, "stop"
                c1 = dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": None}])
                c2 = dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": finish}],
                          usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
                body = f"data: {json.dumps(c1)}\n\ndata: {json.dumps(c2)}\n\ndata: [DONE]\n\n".encode()
                self._send(200, body, "text/event-stream")

        return Handler

    def spawns(self, body: dict) -> bool:
        """The root's turn, offered the `task` tool, before its result: call it (the child's own turn,
        which gets the task's prompt, and the root's turn after the result are answered in words)."""
        if self.task is None or "task" not in {t["function"]["name"] for t in body.get("tools", [])}:
            return False
        last = body["messages"][-1]
        return last["role"] == "user" and self.task["prompt"] not in json.dumps(last.get("content"))
