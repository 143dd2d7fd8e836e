"""`confabctl login` and `logout`: the backend URL and an API key in ~/.confab/config.json.

The file is the one the confab Go CLI writes, in its format (two-space JSON,
mode 0600, its directory 0700), and every other key in it (`redaction`,
`bindings`, ...) is kept. A key is saved only once the server has said it is
valid (`GET /api/v1/auth/validate`); the device login gets one from the server:
`POST /auth/device/code` gives a code the person enters in a browser, then
`POST /auth/device/token` is polled every max(interval, 5 s) until it answers
with the key (`slow_down` adds 5 s, as the server asks).
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Callable, Optional, TextIO

from . import fileio, paths
from .config import check_backend_url, load_backend_config
from .errors import ConfabdError, ConfigError
from .sinks.base import AuthFailed, SinkError
from .sinks.http import DEVICE_CODE_PATH, DEVICE_TOKEN_PATH, HttpSink

MIN_POLL_S = 5.0
SLOW_DOWN_S = 5.0
LOGIN_TIMEOUT_S = 30.0


class LoginError(ConfabdError):
    """Login could not finish; the message says why and what to do."""


def default_key_name() -> str:
    return f"{socket.gethostname() or 'this machine'} (confabd)"


def login(home: str, backend_url: str, out: TextIO, api_key: str = "", key_name: str = "",
          sleep: Callable[[float], None] = time.sleep) -> str:
    """Log in and save the credentials; the config file's path. LoginError when it cannot."""
    url = _backend_url(home, backend_url)
    out.write(f"Backend: {url}\n")
    if api_key:
        api_key = api_key.strip()
        out.write("Checking the API key...\n")
    else:
        api_key = device_login(url, key_name or default_key_name(), out, sleep)
    validate(url, api_key)
    path = save_credentials(home, url, api_key)
    out.write(f"Logged in: the key is valid and saved in {path}\n")
    return path


def _backend_url(home: str, given: str) -> str:
    url = given or load_backend_config(home).backend_url
    if not url:
        raise LoginError("which backend? give --backend-url URL (e.g. https://confabulous.dev)")
    try:
        return check_backend_url(url)
    except ConfigError as exc:
        raise LoginError(str(exc)) from None


def validate(url: str, api_key: str) -> None:
    """The server's check of the key; LoginError (without the key) when it refuses it."""
    try:
        with HttpSink(url, api_key, timeout=LOGIN_TIMEOUT_S) as sink:
            answer = sink.validate_key()
    except AuthFailed as exc:
        raise LoginError(f"the backend does not accept this API key ({exc})") from None
    except (SinkError, ConfigError) as exc:
        raise LoginError(f"cannot check the API key: {exc}") from None
    if answer.get("valid") is not True:
        raise LoginError("the backend says this API key is not valid")


def device_login(url: str, key_name: str, out: TextIO, sleep: Callable[[float], None]) -> str:
    """The device-code flow: show the code and the URL, poll until the server hands out a key."""
    with HttpSink(url, "", timeout=LOGIN_TIMEOUT_S) as sink:
        status, code = _post(sink, DEVICE_CODE_PATH, {"key_name": key_name})
        if status != 200 or not code.get("device_code") or not code.get("user_code"):
            raise LoginError(f"the backend did not start a device login (HTTP {status}: {code.get('error', code)})")
        uri = str(code.get("verification_uri") or url + "/auth/device")
        separator = "&" if "?" in uri else "?"
        out.write(f"To log in, open:\n  {uri}{separator}code={code['user_code']}\n"
                  f"and enter the code {code['user_code']}\nWaiting for you to approve it...\n")
        out.flush()
        interval = max(float(code.get("interval") or 0), MIN_POLL_S)
        deadline = time.monotonic() + float(code.get("expires_in") or 900)
        while time.monotonic() < deadline:
            sleep(interval)
            status, token = _post(sink, DEVICE_TOKEN_PATH, {"device_code": code["device_code"]})
            error = token.get("error") or ""
            if token.get("access_token") and not error:
                return str(token["access_token"])
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += SLOW_DOWN_S
                continue
            if error == "api_key_limit_exceeded":
                raise LoginError(f"you have too many API keys; delete unused ones at {url}/keys, then log in again")
            raise LoginError(f"the backend refused the login ({error or f'HTTP {status}'})")
    raise LoginError("the code expired before it was approved; run confabctl login again")


def _post(sink: HttpSink, path: str, payload: dict) -> tuple[int, dict]:
    try:
        return sink.post_unauthenticated(path, payload)
    except SinkError as exc:
        raise LoginError(f"cannot reach the backend: {exc}") from None


def save_credentials(home: str, backend_url: str, api_key: str) -> str:
    """Write backend_url and api_key into ~/.confab/config.json, keeping every other key."""
    path = paths.confab_config_path(home)
    config = read_config(path)
    config["backend_url"], config["api_key"] = backend_url, api_key
    write_config(path, config)
    return path


def logout(home: str, out: TextIO) -> None:
    path = paths.confab_config_path(home)
    config = read_config(path)
    if not config.get("api_key"):
        out.write("Already logged out: no API key in " + path + "\n")
        return
    config["api_key"] = ""
    write_config(path, config)
    out.write(f"Logged out: the API key is removed from {path}; nothing is uploaded until you log in again\n")


def read_config(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise LoginError(f"{path}: cannot read ({exc.strerror})") from None
    if not data.strip():
        return {}
    try:
        config = json.loads(data)
    except ValueError as exc:
        raise LoginError(f"{path}: not valid JSON ({exc}); fix or remove it first") from None
    if not isinstance(config, dict):
        raise LoginError(f"{path}: not a JSON object; fix or remove it first")
    return config


def write_config(path: str, config: dict) -> None:
    fileio.make_dirs(os.path.dirname(path), 0o700)
    fileio.atomic_write(path, json.dumps(config, indent=2).encode())  # 0600, as the Go CLI writes it


def run_login(args, home: Optional[str] = None, out: Optional[TextIO] = None) -> int:
    import sys

    out = out or sys.stdout
    try:
        login(home or paths.home_dir(), args.backend_url or "", out, api_key=args.api_key or "",
              key_name=args.name or "")
    except LoginError as exc:
        sys.stderr.write(f"confabctl: login: {exc}\n")
        return 1
    out.write("Next: confabctl install-hooks (once), and your next Claude Code session is shipped.\n")
    return 0


def run_logout(args, home: Optional[str] = None, out: Optional[TextIO] = None) -> int:
    import sys

    try:
        logout(home or paths.home_dir(), out or sys.stdout)
    except LoginError as exc:
        sys.stderr.write(f"confabctl: logout: {exc}\n")
        return 1
    return 0
