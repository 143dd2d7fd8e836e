"""Packages: build the .deb and .rpm, lint them, check their contents, install.

Two kinds of tests:
- static checks of packaging/ (units, init script, config file, hooks): always run;
- `@pytest.mark.packaging` tests that build both packages with
  `packaging/build.sh all` (about 10 s with a warm pip cache under
  packaging/out/, 20-30 s cold; PyPI is reached at build time) and check them
  with lintian, rpmlint, systemd-analyze, dpkg-deb and rpm. Without the build
  tools (packaging/build-deps.txt) they skip, except under CI=true, where a
  missing tool is a failure.

The install test (`apt-get install ./confabd_*.deb`, then `--version`, then
purge and a check that nothing is left) runs on THIS machine, and only as root
under CI=true (or CONFABD_TEST_INSTALL=1): it takes 2 s, where a throwaway
debootstrap root takes 40 s or more and needs the Debian mirror. The clean-system
install and the real boot under systemd are packaging/test-nspawn.sh's job
(`make -C packaging nspawn`, a few minutes, run separately).
"""

from __future__ import annotations

import configparser
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import require_root_for

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "packaging"
OUT = PKG / "out"
IN_CI = os.environ.get("CI", "").lower() == "true"

BUILD_TOOLS = ["dpkg-deb", "lintian", "rpm", "rpmlint", "systemd-analyze", "strip", "objdump", "gzip"]


def version() -> str:
    text = (REPO / "confabd" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def deb_arch() -> str:
    try:
        return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "amd64"


def missing_build_tools() -> list:
    missing = [t for t in BUILD_TOOLS if shutil.which(t) is None]
    if not os.path.exists("/usr/bin/python3"):
        missing.append("python3")
    elif subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"],
                        capture_output=True).returncode != 0:
        missing.append("python3-venv")
    return missing


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(cmd, **kw)


# --------------------------------------------------------------------------- builds


@pytest.fixture(scope="module")
def packages():
    """Build both packages once for this module: {'deb': Path, 'rpm': Path}."""
    missing = missing_build_tools()
    if missing:
        message = ("packaging build tools missing: " + ", ".join(missing)
                   + " (apt-get install $(cat packaging/build-deps.txt))")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    proc = run([str(PKG / "build.sh"), "all"], timeout=600)
    assert proc.returncode == 0, f"build.sh failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    v, arch = version(), deb_arch()
    deb = OUT / f"confabd_{v}_{arch}.deb"
    rpm = OUT / f"confabd-{v}-1.{os.uname().machine}.rpm"
    assert deb.is_file(), proc.stdout
    assert rpm.is_file(), proc.stdout
    return {"deb": deb, "rpm": rpm}


@pytest.fixture(scope="module")
def deb_root(packages, tmp_path_factory):
    root = tmp_path_factory.mktemp("debroot")
    proc = run(["dpkg-deb", "-x", str(packages["deb"]), str(root)])
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.mark.packaging
def test_output_names(packages):
    assert packages["deb"].name == f"confabd_{version()}_{deb_arch()}.deb"
    assert re.fullmatch(rf"confabd-{re.escape(version())}-1\.[a-z0-9_]+\.rpm", packages["rpm"].name)


@pytest.mark.packaging
def test_lintian_no_errors_no_unexplained_warnings(packages):
    proc = run(["lintian", "--fail-on", "error,warning", str(packages["deb"])], timeout=300)
    tags = [line for line in proc.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert proc.returncode == 0 and not tags, proc.stdout + proc.stderr


@pytest.mark.packaging
def test_rpmlint_clean(packages):
    proc = run(["rpmlint", "-c", str(PKG / "rpm" / "rpmlint.toml"),
                "-r", str(PKG / "rpm" / "confabd.rpmlintrc"), str(packages["rpm"])], timeout=300)
    assert " 0 errors, 0 warnings" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.packaging
@pytest.mark.parametrize("mode", ["system", "user"])
def test_systemd_analyze_verify(deb_root, tmp_path, mode):
    unit = (deb_root / "usr/lib/systemd" / mode / "confabd.service").read_text()
    # verify wants ExecStart's program to exist: point it into the unpacked package.
    unit = unit.replace("/usr/bin/confabd", str(deb_root / "usr/bin/confabd"))
    (tmp_path / mode).mkdir()
    path = tmp_path / mode / "confabd.service"
    path.write_text(unit)
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(xdg))
    proc = run(["systemd-analyze", f"--{mode}", "verify", "--man=no", str(path)], env=env, timeout=120)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


EXPECTED_DEB_FILES = {
    "./usr/bin/confabd": "-rwxr-xr-x",
    "./usr/bin/confabctl": "-rwxr-xr-x",
    "./usr/lib/systemd/system/confabd.service": "-rw-r--r--",
    "./usr/lib/systemd/user/confabd.service": "-rw-r--r--",
    "./etc/init.d/confabd": "-rwxr-xr-x",
    "./etc/confabd/confabd.toml": "-rw-r--r--",
    "./etc/logrotate.d/confabd": "-rw-r--r--",
    "./usr/share/confabd/hooks/session-start": "-rwxr-xr-x",
    "./usr/share/confabd/hooks/session-end": "-rwxr-xr-x",
    "./usr/share/confabd/hooks/user-prompt-submit": "-rwxr-xr-x",
    "./usr/share/man/man8/confabd.8.gz": "-rw-r--r--",
    "./usr/share/man/man1/confabctl.1.gz": "-rw-r--r--",
    "./usr/share/doc/confabd/copyright": "-rw-r--r--",
    "./usr/share/doc/confabd/changelog.gz": "-rw-r--r--",
    "./usr/lib/confabd/venv/pyvenv.cfg": "-rw-r--r--",
}


@pytest.mark.packaging
def test_deb_contents(packages):
    listing = run(["dpkg-deb", "-c", str(packages["deb"])]).stdout.splitlines()
    entries = {}
    for line in listing:
        fields = line.split()
        entries[fields[5]] = (fields[0], fields[1], line)
    for path, perms in EXPECTED_DEB_FILES.items():
        assert path in entries, f"{path} missing from the .deb"
        assert entries[path][0] == perms, entries[path][2]
    assert all(owner == "root/root" for _, owner, _ in entries.values())
    names = list(entries)
    # the private venv: our package and every runtime dependency, no pip, no bytecode
    site = [n for n in names if "/site-packages/" in n]
    for dist in ("confabd", "msgspec", "psutil", "requests", "daemon", "zstandard"):
        assert any(re.search(rf"/site-packages/{dist}/__init__\.py$", n) for n in site), dist
    assert not [n for n in names if "/site-packages/pip/" in n or "/site-packages/setuptools/" in n]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith("./usr/lib/confabd/venv/bin/") and n != "./usr/lib/confabd/venv/bin/"
                and "python" not in n]
    ctrl = run(["dpkg-deb", "--ctrl-tarfile", str(packages["deb"])], text=False).stdout
    with tarfile.open(fileobj=io.BytesIO(ctrl)) as tf:
        members = {m.name.lstrip("./"): m for m in tf.getmembers()}
        conffiles = tf.extractfile(members["conffiles"]).read().decode().split()
        for script in ("postinst", "prerm", "postrm"):
            assert members[script].mode & 0o111, script
    assert sorted(conffiles) == ["/etc/confabd/confabd.toml", "/etc/init.d/confabd",
                                 "/etc/logrotate.d/confabd"]
    depends = run(["dpkg-deb", "-f", str(packages["deb"]), "Depends"]).stdout
    assert re.search(r"\bpython3\.\d+\b", depends), depends
    assert "libc6" in depends


@pytest.mark.packaging
def test_deb_venv_is_relocated(deb_root):
    venv = deb_root / "usr/lib/confabd/venv"
    assert "/packaging/out" not in (venv / "pyvenv.cfg").read_text()
    proc = run(["grep", "-rlF", str(OUT), str(deb_root)])
    assert proc.stdout == "", "build paths left in:\n" + proc.stdout
    pythons = sorted(os.listdir(venv / "bin"))
    assert pythons[:2] == ["python", "python3"], pythons
    versioned = [p for p in pythons if re.fullmatch(r"python3\.\d+", p)]
    assert versioned and os.readlink(venv / "bin" / versioned[0]) == f"../../../../bin/{versioned[0]}"
    for entry, flags in (("confabd", "-IB"), ("confabctl", "-IBS")):  # confabctl, the hook: no site either
        first = (deb_root / "usr/bin" / entry).read_text().splitlines()[0]
        assert first == "#!/usr/lib/confabd/venv/bin/python3 " + flags, first


@pytest.mark.packaging
def test_deb_entry_points_run(deb_root, tmp_path):
    """Run the unpacked package's entry points with its own venv (no install)."""
    venv = deb_root / "usr/lib/confabd/venv"
    versioned = next(p for p in os.listdir(venv / "bin") if re.fullmatch(r"python3\.\d+", p))
    target = Path("/usr/bin") / versioned
    if not target.exists():
        pytest.skip(f"{target} (the package's interpreter) is not on this machine")
    # the venv's link is relative to its final place; give the unpacked tree its /usr/bin
    (deb_root / "usr/bin" / versioned).unlink(missing_ok=True)
    (deb_root / "usr/bin" / versioned).symlink_to(target)
    python = str(venv / "bin" / "python3")
    for entry, prog in (("confabctl", "confabctl"), ("confabd", "confabd")):
        proc = run([python, "-IB", str(deb_root / "usr/bin" / entry), "--version"], timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert (proc.stdout + proc.stderr).strip() == f"{prog} {version()}"
    proc = run([python, "-IB", "-c", "import sys, confabd, msgspec; print(sys.prefix, confabd.__file__)"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == str(venv)
    settings = tmp_path / "settings.json"
    proc = run([python, "-IB", str(deb_root / "usr/bin/confabctl"), "install-hooks", "--settings",
                str(settings)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "confabctl hook session-start" in settings.read_text()


@pytest.mark.packaging
def test_rpm_contents(packages):
    rpm = str(packages["rpm"])
    files = run(["rpm", "-qpl", rpm]).stdout.split()
    for path in EXPECTED_DEB_FILES:
        path = path[1:]
        if path in ("/etc/init.d/confabd", "/etc/logrotate.d/confabd"):
            assert path not in files  # Fedora/RHEL: systemd only, journal logging
        else:
            assert path in files, path
    assert "/usr/lib/confabd" in files  # the rpm owns its directories
    config = run(["rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", rpm]).stdout
    assert re.search(r"^cn /etc/confabd/confabd.toml$", config, re.M), config
    # bytecode shipped, compiled for its final path
    assert any(f.endswith(".pyc") and "/site-packages/confabd/" in f for f in files)
    requires = run(["rpm", "-qp", "--requires", rpm]).stdout
    assert re.search(r"^python3\.\d+$", requires, re.M), requires
    scripts = run(["rpm", "-qp", "--scripts", rpm]).stdout
    for part in ("postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet",
                 "systemctl --no-reload preset confabd.service", "try-restart confabd.service"):
        assert part in scripts, part


@pytest.mark.packaging
def test_install_and_purge_on_this_machine(packages, tmp_path):
    """apt install ./confabd_*.deb; both commands work; purge leaves nothing behind."""
    if os.geteuid() != 0:
        pytest.skip("installs a package: root only")
    if not (IN_CI or os.environ.get("CONFABD_TEST_INSTALL") == "1"):
        pytest.skip("installs into this machine: only under CI=true or CONFABD_TEST_INSTALL=1")
    if run(["dpkg-query", "-W", "-f", "${Status}", "confabd"]).stdout.startswith("install ok"):
        pytest.skip("a confabd package is already installed here; not touching it")

    def snapshot():
        ignore = re.compile(r"^/var/(lib/(dpkg|apt)|cache|log/(apt|dpkg))|^/run/(user|lock)|^/var/log/journal")
        found = set()
        for top in ("/etc", "/usr", "/var/lib", "/var/log", "/run", "/opt"):
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    p = os.path.join(dirpath, name)
                    if not ignore.match(p):
                        found.add(p)
        return found

    before = snapshot()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        proc = run(["apt-get", "install", "-y", "-q", "--no-install-recommends", str(packages["deb"])],
                   env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for prog in ("confabctl", "confabd"):
            proc = run([f"/usr/bin/{prog}", "--version"])
            assert proc.returncode == 0, proc.stderr
            assert (proc.stdout + proc.stderr).strip() == f"{prog} {version()}"
        assert os.path.islink("/etc/systemd/system/multi-user.target.wants/confabd.service")
        # the installed units verify as they are
        for mode in ("system", "user"):
            xdg = tmp_path / f"xdg-{mode}"
            xdg.mkdir(mode=0o700)
            proc = run(["systemd-analyze", f"--{mode}", "verify", "--man=no",
                        f"/usr/lib/systemd/{mode}/confabd.service"],
                       env=dict(os.environ, XDG_RUNTIME_DIR=str(xdg)))
            assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr
        settings = tmp_path / "settings.json"
        proc = run(["/usr/share/confabd/hooks/session-start"], input="not json", timeout=60)
        assert proc.returncode == 0  # a hook never fails Claude Code
        proc = run(["/usr/bin/confabctl", "install-hooks", "--settings", str(settings)])
        assert proc.returncode == 0, proc.stderr
    finally:
        purge = run(["apt-get", "purge", "-y", "-q", "confabd"], env=env, timeout=300)
    assert purge.returncode == 0, purge.stdout + purge.stderr
    left = sorted(snapshot() - before)
    assert left == [], "left behind after purge: " + ", ".join(left)


@pytest.mark.packaging
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_nspawn_boot(packages):
    """packaging/test-nspawn.sh: the .deb booted under systemd in systemd-nspawn.

    Part of the default run as root (about 90 s cold: debootstrap, boot,
    checks); skip it with CONFABD_TEST_NSPAWN=0. Not root: skipped, since
    nspawn cannot run. Under CI=true, root is expected and a skip is a failure.
    Also runnable alone: `sudo make -C packaging nspawn`.
    """
    require_root_for("the systemd-nspawn boot test", "CONFABD_TEST_NSPAWN", "sudo make -C packaging nspawn")
    proc = run([str(PKG / "test-nspawn.sh"), str(packages["deb"])], timeout=900)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]


# --------------------------------------------------------------------------- static checks


def unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read_string(path.read_text())
    return cp


def unit_lines(path: Path) -> list[tuple[str, str]]:
    """Every key = value of a unit, repeated keys included (configparser keeps only the last)."""
    return [tuple(part.strip() for part in line.split("=", 1)) for line in path.read_text().splitlines()
            if "=" in line and not line.lstrip().startswith(("#", ";"))]


def test_system_unit():
    u = unit(PKG / "systemd/system/confabd.service")
    s = u["Service"]
    assert s["Type"] == "notify"
    assert s["ExecStart"] == "/usr/bin/confabd --system $DAEMON_OPTS"
    assert s["EnvironmentFile"] == "-/etc/default/confabd"  # as the SysV script reads it
    assert s["RestartPreventExitStatus"] == "78"  # a bad config is not restarted every 2 s forever
    reload = [v for k, v in unit_lines(PKG / "systemd/system/confabd.service") if k == "ExecReload"]
    assert reload == ["/usr/bin/confabd --system --check-config", "/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == "on-failure"
    assert s["RuntimeDirectory"] == "confabd"
    assert s["KillMode"] == "mixed"
    # hardening that would stop workers reading transcripts / writing ~/.confab
    for key in ("ProtectHome", "PrivateTmp", "ProtectProc", "DynamicUser", "User"):
        assert key not in s, key
    assert s["ProtectSystem"] in ("full", "true")
    caps = s["CapabilityBoundingSet"].split()
    for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_DAC_READ_SEARCH"):
        assert cap in caps
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_user_unit():
    u = unit(PKG / "systemd/user/confabd.service")
    s = u["Service"]
    assert s["Type"] == "notify"
    assert s["ExecStart"] == "/usr/bin/confabd --foreground"
    assert s["RestartPreventExitStatus"] == "78"
    reload = [v for k, v in unit_lines(PKG / "systemd/user/confabd.service") if k == "ExecReload"]
    assert reload == ["/usr/bin/confabd --check-config", "/bin/kill -HUP $MAINPID"]
    assert u["Install"]["WantedBy"] == "default.target"


def test_sysv_script():
    path = PKG / "init.d/confabd"
    text = path.read_text()
    assert os.access(path, os.X_OK)
    assert run(["sh", "-n", str(path)]).returncode == 0
    header = text.split("### BEGIN INIT INFO", 1)[1].split("### END INIT INFO", 1)[0]
    for field in ("Provides:", "Required-Start:", "Required-Stop:", "Default-Start:", "Default-Stop:",
                  "Short-Description:"):
        assert field in header
    assert "--system --daemon --pidfile \"$PIDFILE\"" in text
    assert "PIDFILE=$RUNDIR/confabd.pid" in text and "RUNDIR=/run/confabd" in text
    for action in ("start)", "stop)", "restart | force-reload)", "reload)", "status)"):
        assert action in text


def test_sysv_script_against_a_fake_daemon(tmp_path):
    """start / status / reload / restart / stop, with a stand-in for confabd."""
    fake = tmp_path / "confabd"
    log = tmp_path / "signals"
    verdict = tmp_path / "check-config-exit"
    fake.write_text(f"""#!/bin/sh
# args: --system --check-config, or --system --daemon --pidfile FILE --log-file FILE
[ "$2" = --check-config ] && exit "$(cat {verdict} 2>/dev/null || echo 0)"
# A Python stand-in, not a shell: a shell cannot trap a signal ignored when it started (POSIX),
# and a suite run under nohup starts everything with SIGHUP ignored: the HUP was lost. The
# pidfile is written once the handlers are set, so `running_pid` means "ready for signals".
{sys.executable} -c '
import os, signal, sys, time
def note(name, then_exit=False):
    def handler(*_):
        with open(sys.argv[2], "a") as f:
            f.write(name + "\\n"); f.flush(); os.fsync(f.fileno())
        if then_exit:
            os._exit(0)
    return handler
signal.signal(signal.SIGHUP, note("HUP"))
signal.signal(signal.SIGTERM, note("TERM", True))
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(1)
' "$4" {log} </dev/null >/dev/null 2>&1 &
""")
    fake.chmod(0o755)
    script = (PKG / "init.d/confabd").read_text()
    script = (script.replace("DAEMON=/usr/bin/confabd", f"DAEMON={fake}")
              .replace("RUNDIR=/run/confabd", f"RUNDIR={tmp_path}/run")
              .replace("LOGDIR=/var/log/confabd", f"LOGDIR={tmp_path}/log")
              .replace("[ -r /etc/default/confabd ]", f"[ -r {tmp_path}/no-such-defaults ]"))
    init = tmp_path / "init"
    init.write_text(script)
    init.chmod(0o755)

    def act(a):
        return run([str(init), a], timeout=30)

    assert act("status").returncode == 3
    assert act("start").returncode == 0
    pid = int((tmp_path / "run/confabd.pid").read_text())
    assert act("status").returncode == 0
    assert act("start").returncode == 0  # already running: fine, no second one
    assert int((tmp_path / "run/confabd.pid").read_text()) == pid
    assert act("reload").returncode == 0
    verdict.write_text("78")  # a bad settings file: reload refuses it and sends no HUP
    assert act("reload").returncode != 0
    verdict.write_text("0")
    assert act("restart").returncode == 0
    assert int((tmp_path / "run/confabd.pid").read_text()) != pid
    assert act("stop").returncode == 0
    assert act("status").returncode == 3
    assert act("stop").returncode == 0  # stopping a stopped service is fine
    assert act("bogus").returncode == 3
    assert log.read_text().split() == ["HUP", "TERM", "TERM"]


def test_config_file_documents_every_setting():
    """Every key of confabd.toml is there, commented out, with its default."""
    msgspec = pytest.importorskip("msgspec")
    from confabd.config import Settings

    text = (PKG / "confabd.toml").read_text()
    assert not [l for l in text.splitlines() if l.strip() and not l.startswith("#")], \
        "every line of the shipped config is a comment"
    uncommented = "\n".join(
        l[1:] for l in text.splitlines() if re.match(r"#[a-z_]+ = ", l))
    settings = msgspec.toml.decode(uncommented.encode(), type=Settings)
    assert settings == Settings()
    keys = {l.split(" = ")[0] for l in uncommented.splitlines()}
    assert keys == set(Settings.__struct_fields__)


def test_hook_scripts():
    for event in ("session-start", "session-end", "user-prompt-submit"):
        path = PKG / "hooks" / event
        assert os.access(path, os.X_OK)
        lines = [l for l in path.read_text().splitlines() if l and not l.startswith("#")]
        assert path.read_text().startswith("#!/bin/sh\n")
        assert lines == [f'exec /usr/bin/confabctl hook {event} "$@"']


def test_maintainer_scripts_are_valid_sh():
    for path in list((PKG / "deb").iterdir()) + [PKG / "rpm" / n for n in ("post", "preun", "postun")]:
        assert run(["sh", "-n", str(path)]).returncode == 0, path
    postinst = (PKG / "deb/postinst").read_text()
    assert "deb-systemd-helper" in postinst and "deb-systemd-invoke" in postinst
    assert "[ -d /run/systemd/system ]" in postinst  # nothing done without a running systemd
    postrm = (PKG / "deb/postrm").read_text()
    assert "rm -rf /var/lib/confabd /var/log/confabd /var/spool/confabd /run/confabd /etc/confabd" in postrm


def test_build_deps_listed():
    deps = (PKG / "build-deps.txt").read_text().split()
    for pkg in ("python3-venv", "lintian", "rpmlint", "rpm", "systemd", "binutils",
                "procps"):  # /bin/kill, for `systemd-analyze verify` of ExecReload
        assert pkg in deps


def test_package_metadata_names_the_project():
    """Maintainer and Homepage are the project's, not example.org placeholders (.invalid: a reserved
    domain that can never be someone else's mailbox; lintian accepts it)."""
    nfpm = (PKG / "nfpm.yaml").read_text()
    assert re.search(r"^maintainer: confabd developers <maintainers@confabd\.invalid>$", nfpm, re.M)
    assert re.search(r"^homepage: https://github\.com/confabd/confabd$", nfpm, re.M)
    for path in (PKG / "nfpm.yaml", PKG / "doc" / "copyright", PKG / "doc" / "changelog.in"):
        assert "example.org" not in path.read_text(), path


def test_removal_tells_the_admin_about_users_hooks():
    """deb postrm remove and rpm %postun erase: users' hooks stay, are harmless, and how to remove them."""
    for path, branch in ((PKG / "deb" / "postrm", 'if [ "$1" = "remove" ]'), (PKG / "rpm" / "postun", "else")):
        text = path.read_text()
        note = text[text.index(branch):]
        assert "hooks_note" in note or "uninstall-hooks" in note, path
        assert "confabctl uninstall-hooks" in text and "do nothing without /usr/bin/confabctl" in text, path


@pytest.mark.packaging
def test_shell_completions_are_shipped_and_complete(deb_root, packages):
    """bash and zsh completions, generated from the parsers at build time (shtab), in both packages."""
    bash_dir = deb_root / "usr/share/bash-completion/completions"
    zsh_dir = deb_root / "usr/share/zsh/vendor-completions"
    for name in ("confabctl", "confabd"):
        assert (bash_dir / name).is_file() and (zsh_dir / f"_{name}").is_file(), name
    probe = """
        source {dir}/confabctl; source {dir}/confabd   # both loaded in one shell: no clash
        COMP_WORDS=(confabctl st); COMP_CWORD=1; _shtab_confabctl; echo "${{COMPREPLY[*]}}"
        COMP_WORDS=(confabctl archive ''); COMP_CWORD=2; _shtab_confabctl; echo "${{COMPREPLY[*]}}"
        COMP_WORDS=(confabd --check); COMP_CWORD=1; _shtab_confabd; echo "${{COMPREPLY[*]}}"
    """.format(dir=bash_dir)
    out = run(["bash", "-c", probe]).stdout.splitlines()
    assert out == ["start stop status", "list export", "--check-config"], out
    rpm_files = run(["rpm", "-qlp", str(packages["rpm"])]).stdout.split()
    assert "/usr/share/bash-completion/completions/confabctl" in rpm_files
    assert "/usr/share/zsh/site-functions/_confabctl" in rpm_files
