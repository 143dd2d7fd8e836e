"""`confabctl install-hooks --provider opencode`: the confabd plugin in OpenCode's plugins dir.

OpenCode loads every `plugins/*.ts` of its config dir (`CONFAB_OPENCODE_CONFIG_DIR`, else
`$XDG_CONFIG_HOME/opencode`, else `~/.config/opencode`: the Go client ignores XDG_CONFIG_HOME).
The plugin (PLUGIN_TEMPLATE, with this confabctl's command line written in) announces a session on
`session.created` and on the events that show a resumed session is active, and ends it on
dispose. The Go client's `confab-sync.ts` is removed: two uploaders for one session would race.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile

PLUGIN = "confabd-sync.ts"
GO_PLUGIN = "confab-sync.ts"
MARK = "confab hook session-start --provider opencode"


# Kept here, not as a package data file: a wheel built without package data still has it.
PLUGIN_TEMPLATE = r"""// confabd's OpenCode plugin, written by `confabctl install-hooks --provider opencode`.
// It tells confabd which OpenCode sessions are active; confabd reads their messages from
// OpenCode's database itself. It never throws into OpenCode: a failed call is logged.
const CONFABCTL: string[] = __CONFABCTL__
// Events that show a session is active: a resumed session has no session.created.
const ACTIVE = new Set(["session.compacted", "session.error", "session.status", "session.updated"])
const MAX_SESSIONS = 32

export const ConfabdSync = async ({ $ }: { $: any }) => {
  const announced = new Set<string>()

  async function run(event: string, payload: Record<string, unknown>) {
    const input = JSON.stringify(payload)
    try {
      await $`echo ${input} | ${CONFABCTL} hook ${event} --provider opencode`.quiet()
      return true
    } catch (err) {
      console.error(`[confabd] ${event} failed for ${payload.session_id}:`, err)
      return false
    }
  }

  async function start(id: string, cwd: string, parentID?: string) {
    if (announced.has(id) || announced.size >= MAX_SESSIONS) return
    announced.add(id)
    const payload: Record<string, unknown> = { session_id: id, cwd, parent_pid: process.pid }
    if (parentID) payload.parent_id = parentID
    if (!(await run("session-start", payload))) announced.delete(id)
  }

  return {
    event: async ({ event }: { event: any }) => {
      if (event.type === "session.created") {
        const info = event.properties.info
        await start(info.id, info.directory ?? "", info.parentID)
      } else if (ACTIVE.has(event.type) && typeof event.properties?.sessionID === "string") {
        await start(event.properties.sessionID, "")
      }
    },
    dispose: async () => {
      for (const id of [...announced]) {
        announced.delete(id)
        await run("session-end", { session_id: id })
      }
    },
  }
}
"""


def config_dir(env=None, home: str = "") -> str:
    env = os.environ if env is None else env
    if env.get("CONFAB_OPENCODE_CONFIG_DIR"):
        return os.path.abspath(env["CONFAB_OPENCODE_CONFIG_DIR"])
    base = env.get("XDG_CONFIG_HOME") or os.path.join(home or os.path.expanduser("~"), ".config")
    return os.path.join(base, "opencode")


def plugin_source(command_prefix: str) -> str:
    return PLUGIN_TEMPLATE.replace("__CONFABCTL__", json.dumps(shlex.split(command_prefix)))


def _target(path: str | None) -> str:
    return os.path.abspath(path) if path else os.path.join(config_dir(), "plugins", PLUGIN)


def install(path: str | None, command_prefix: str, dry_run: bool = False) -> int:
    target = _target(path)
    source = plugin_source(command_prefix)
    go = os.path.join(os.path.dirname(target), GO_PLUGIN)
    try:
        with open(target, encoding="utf-8") as fh:
            current = fh.read()
    except FileNotFoundError:
        current = None
    go_there = os.path.isfile(go) and MARK in open(go, encoding="utf-8", errors="replace").read()
    if current == source and not go_there:
        print(f"{target}: the OpenCode plugin is installed already")
        return 0
    if dry_run:
        print(f"{target}: would write the confabd plugin" + (f"; would remove {go}" if go_there else ""))
        return 0
    directory = os.path.dirname(target)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".confabd-sync.", dir=directory)
    with os.fdopen(fd, "w") as fh:
        fh.write(source)
    os.chmod(tmp, 0o644)  # OpenCode reads it; it holds nothing secret
    os.replace(tmp, target)
    if go_there:
        os.unlink(go)
    print(f"{target}: the OpenCode plugin is installed" + (f" (the Go client's {GO_PLUGIN} removed)" if go_there else ""))
    return 0


def uninstall(path: str | None, dry_run: bool = False) -> int:
    target = _target(path)
    if not os.path.exists(target):
        print(f"{target}: no confabd OpenCode plugin")
        return 0
    if not dry_run:
        os.unlink(target)
    print(f"{target}: {'would remove' if dry_run else 'removed'} the confabd OpenCode plugin")
    return 0


if __name__ == "__main__":  # pragma: no cover - a manual check of the generated plugin
    sys.stdout.write(plugin_source(" ".join(sys.argv[1:]) or "confabctl"))
