#!/usr/bin/env bash
# Build the trainer helper's wheel (python/: distribution baton-ckpt, module baton_ckpt)
# into target/dist/, then check it: it installs into a scratch virtualenv and imports
# without torch. Part of `make dist`. Needs python3 with venv and pip, and PyPI for
# setuptools (pip's isolated build environment) on the first run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=target/dist
say() { printf 'wheel: %s\n' "$*"; }
die() { printf 'wheel: FAILED: %s\n' "$*" >&2; exit 1; }

mkdir -p "$OUT"
rm -f "$OUT"/baton_ckpt-*.whl
rm -rf python/build python/*.egg-info
python3 -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$OUT" ./python || die "pip wheel ./python failed"
rm -rf python/build python/*.egg-info
WHEEL=$(ls "$OUT"/baton_ckpt-*.whl) || die "no wheel in $OUT"

CHECK=$(mktemp -d)
trap 'rm -rf "$CHECK"' EXIT
python3 -m venv "$CHECK/venv"
"$CHECK/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index "$WHEEL" ||
    die "the wheel does not install"
(cd "$CHECK" && env -u BATON_SOCKET "$CHECK/venv/bin/python" -c \
    'import sys, importlib.metadata as m, baton_ckpt as b; assert "torch" not in sys.modules
assert m.version("baton-ckpt") == b.__version__; assert b.commit() is False' 2>/dev/null) ||
    die "the installed wheel does not import"
say "OK: $WHEEL"
