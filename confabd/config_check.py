"""`confabd --check-config` and `--print-config`: a settings file judged before it is used.

`load_settings` stops at the first problem, which is right for a master that
must refuse to start; a person fixing a file wants every problem at once, and
a hint for a misspelt key. `effective_settings` says where each value came
from (default, file or environment), so a surprise can be traced.
"""

from __future__ import annotations

import difflib
from typing import Any, Optional

import msgspec

from .config import ENV_INT_OVERRIDES, Settings, load_settings
from .errors import ConfigError

EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h); the units' RestartPreventExitStatus names it

FIELDS = tuple(f.name for f in msgspec.structs.fields(Settings))
ENV_STRING_OVERRIDES = {"CONFABD_STATE_DIR": "state_dir", "CONFABD_SOCKET": "socket"}


def problems_in(path: str, env, required: bool = True) -> list[str]:
    """Every problem of the settings file at `path` and of the environment overrides; [] when fine."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [f"{path}: no such config file"] if required else _env_problems(env)
    except OSError as exc:
        return [f"{path}: cannot read config ({exc.strerror})"]
    try:
        table = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        return [f"{path}: not valid TOML: {exc}"]
    if not isinstance(table, dict):
        return [f"{path}: expected a table of settings"]
    found = [f"{path}: {p}" for p in _table_problems(table)]
    return found + _env_problems(env)


def _table_problems(table: dict) -> list[str]:
    found = []
    for key, value in table.items():
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            found.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        try:
            msgspec.convert({key: value}, Settings)
        except (msgspec.ValidationError, ValueError) as exc:
            found.append(f"{key} = {value!r}: {_plain(exc)}")
    if not found:  # each key alone was fine; together they may still not be
        try:
            msgspec.convert(table, Settings)
        except (msgspec.ValidationError, ValueError) as exc:
            found.append(_plain(exc))
    return found


def _env_problems(env) -> list[str]:
    found = []
    for var in ENV_INT_OVERRIDES:
        value = env.get(var)
        if value:
            try:
                int(value)
            except ValueError:
                found.append(f"{var}={value!r}: expected a whole number of milliseconds")
    return found


def _plain(exc: Exception) -> str:
    """msgspec's message without its JSON-path suffix, which names a key the line already names."""
    return str(exc).split(" - at `$", 1)[0]


def effective_settings(path: Optional[str], env, required: bool = False) -> list[tuple[str, Any, str]]:
    """(key, value, where it came from) for every setting: "default", the file's path, or "$VAR"."""
    settings = load_settings(path, env, required=required)  # raises ConfigError, as the master would
    in_file: dict = {}
    if path:
        try:
            with open(path, "rb") as f:
                in_file = msgspec.toml.decode(f.read())
        except (FileNotFoundError, msgspec.DecodeError):
            in_file = {}
    from_env = {field: f"${var}" for var, field in {**ENV_INT_OVERRIDES, **ENV_STRING_OVERRIDES}.items()
                if env.get(var)}
    rows = []
    for key in FIELDS:
        source = from_env.get(key) or (path if key in in_file else "default")
        rows.append((key, getattr(settings, key), source))
    return rows


def check_config(path: str, env, out, err, required: bool = True) -> int:
    """Print the verdict on `path`; EXIT_CONFIG with every problem listed, else 0."""
    found = problems_in(path, env, required)
    if found:
        for problem in found:
            err.write(f"confabd: {problem}\n")
        err.write(f"confabd: {len(found)} problem{'s' if len(found) > 1 else ''} in the configuration\n")
        return EXIT_CONFIG
    out.write(f"{path}: configuration OK\n")
    return 0


def print_config(path: str, env, out, err, required: bool = False) -> int:
    try:
        rows = effective_settings(path, env, required)
    except ConfigError as exc:
        err.write(f"confabd: {exc}\n")
        return EXIT_CONFIG
    width = max(len(key) for key, _value, _source in rows)
    for key, value, source in rows:
        out.write(f"{key.ljust(width)} = {msgspec.json.encode(value).decode()}  # {source}\n")
    return 0
