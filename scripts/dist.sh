#!/usr/bin/env bash
# Build a portable baton for x86_64 Linux execute points as old as glibc 2.17 (EL7, EL8,
# Debian 8+, Ubuntu 14.04+): target/dist/baton, stripped, needing nothing but glibc.
#
#   make dist            (or: bash scripts/dist.sh)
#
# How: cargo-zigbuild links against glibc 2.17's symbol versions with `zig cc` (zig ships
# the headers and stub libraries of every glibc version, so no old sysroot or container
# is needed). Everything it installs stays under target/:
#   target/dist-venv/   a Python virtualenv with the `ziglang` wheel (zig itself) and the
#                       `cargo-zigbuild` wheel (its prebuilt binary);
#   target/dist/        CARGO_TARGET_DIR of this build (the main debug/release builds in
#                       target/ are not touched), zig's caches, and the result baton.
# Needs: a Rust toolchain (cargo, rustup), python3 with venv and pip, network access to
# crates.io and PyPI on the first run; binutils (readelf, strip) are apt-installed if absent.
#
# After building, the binary is checked and the script fails loudly unless
#   - the highest GLIBC_x.y symbol version it requires is <= 2.17,
#   - its NEEDED libraries are glibc's own (libc, libm, libpthread, libdl, librt, the
#     dynamic loader); libgcc_s, libstdc++, libssl etc. are refused,
#   - it runs here (`baton --version`, `baton --parse-only run -- true`).
#
# Knobs (environment): ZIGLANG_VERSION, CARGO_ZIGBUILD_VERSION (pinned below),
# DIST_GLIBC (default 2.17).
#
#   bash scripts/dist.sh --check FILE    only run the checks on FILE (e.g. a plain
#                                        target/release/baton, which fails them)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

GLIBC=${DIST_GLIBC:-2.17}
TRIPLE=x86_64-unknown-linux-gnu
# zig 0.16.0's `zig ar` cannot create new archives (it breaks every cc-rs build, ring's
# and aws-lc-sys's included: aws/aws-lc-rs#993), so zig is pinned to the 0.15 line.
ZIGLANG_VERSION=${ZIGLANG_VERSION:-0.15.2}
CARGO_ZIGBUILD_VERSION=${CARGO_ZIGBUILD_VERSION:-0.24.1}

VENV=$ROOT/target/dist-venv
OUT=$ROOT/target/dist
BIN=$OUT/baton

say() { printf 'dist: %s\n' "$*"; }
die() { printf 'dist: FAILED: %s\n' "$*" >&2; exit 1; }

CHECK_ONLY=
if [[ ${1:-} == --check ]]; then
    CHECK_ONLY=${2:?usage: scripts/dist.sh --check FILE}
    [[ -f $CHECK_ONLY ]] || die "$CHECK_ONLY: no such file"
fi

[[ $(uname -m) == x86_64 ]] || die "this script builds on x86_64 Linux hosts only (this is $(uname -m))"
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) first"
command -v python3 >/dev/null || die "python3 not found: it is needed for the ziglang wheel"

if [[ -z $CHECK_ONLY ]]; then
# --- tools --------------------------------------------------------------------------
# binutils: readelf for the checks, strip for the result.
if ! command -v readelf >/dev/null || ! command -v strip >/dev/null || ! command -v objdump >/dev/null; then
    say "installing binutils (readelf, objdump, strip)"
    command -v apt-get >/dev/null || die "readelf/strip missing and no apt-get: install binutils"
    apt-get install -y -q binutils >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q binutils >/dev/null; } ||
        die "cannot install binutils"
fi

# The host target is installed with the toolchain; this is a no-op there, and installs
# the std library when the default toolchain lacks it (e.g. a musl-hosted rustup).
if command -v rustup >/dev/null; then
    rustup target list --installed 2>/dev/null | grep -qx "$TRIPLE" ||
        rustup target add "$TRIPLE" || die "rustup target add $TRIPLE failed"
fi

STAMP=$VENV/.installed-ziglang-$ZIGLANG_VERSION-cargo-zigbuild-$CARGO_ZIGBUILD_VERSION
if [[ ! -e $STAMP ]]; then
    say "installing ziglang==$ZIGLANG_VERSION and cargo-zigbuild==$CARGO_ZIGBUILD_VERSION into ${VENV#"$ROOT"/}"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "ziglang==$ZIGLANG_VERSION" || die "pip install ziglang==$ZIGLANG_VERSION failed"
    # cargo-zigbuild's PyPI wheel is its prebuilt binary; building it from crates.io
    # (the fallback) takes a few minutes more.
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"; then
        say "no cargo-zigbuild wheel; building it from crates.io"
        cargo install --locked --quiet --root "$VENV" --version "$CARGO_ZIGBUILD_VERSION" cargo-zigbuild ||
            die "cargo install cargo-zigbuild failed"
    fi
    touch "$STAMP"
fi
[[ -x $VENV/bin/cargo-zigbuild ]] || die "$VENV/bin/cargo-zigbuild missing: rm -rf $VENV and rerun"

# cargo-zigbuild runs zig as `$CARGO_ZIGBUILD_PYTHON_PATH -m ziglang`; point it at the venv.
export PATH=$VENV/bin:$PATH
export CARGO_ZIGBUILD_PYTHON_PATH=$VENV/bin/python
export CARGO_ZIGBUILD_CACHE_DIR=$OUT/zigbuild-cache
export ZIG_GLOBAL_CACHE_DIR=$OUT/zig-cache
export ZIG_LOCAL_CACHE_DIR=$OUT/zig-cache
export CARGO_TARGET_DIR=$OUT
say "zig $("$VENV/bin/python" -m ziglang version), $(cargo-zigbuild --version 2>/dev/null | head -1), $(cargo --version)"

# --- build --------------------------------------------------------------------------
say "building baton for $TRIPLE, glibc $GLIBC (CARGO_TARGET_DIR=${OUT#"$ROOT"/})"
start=$(date +%s)
cargo zigbuild --release --locked --bin baton --target "$TRIPLE.$GLIBC" ||
    die "cargo zigbuild failed (see above)"
secs=$(( $(date +%s) - start ))
# The glibc suffix is not part of the output directory.
BUILT=$OUT/$TRIPLE/release/baton
[[ -x $BUILT ]] || die "the build reported success but $BUILT is missing"
say "built in ${secs}s"
else
    command -v readelf >/dev/null || die "readelf missing: install binutils"
    BUILT=$CHECK_ONLY
fi

# --- checks -------------------------------------------------------------------------
ELF_CLASS=$(readelf -h "$BUILT" | awk -F: '/Class:/ {gsub(/ /, "", $2); print $2}')
MACHINE=$(readelf -h "$BUILT" | awk -F: '/Machine:/ {sub(/^ +/, "", $2); print $2}')
[[ $ELF_CLASS == ELF64 && $MACHINE == *X86-64* ]] || die "not an x86-64 ELF64 binary: $ELF_CLASS $MACHINE"

INTERP=$(readelf -l "$BUILT" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
[[ $INTERP == /lib64/ld-linux-x86-64.so.2 ]] || die "unexpected program interpreter: '${INTERP:-none}'"

mapfile -t NEEDED < <(readelf -d "$BUILT" | sed -n 's/.*(NEEDED).*Shared library: \[\(.*\)\]/\1/p')
bad=()
for lib in "${NEEDED[@]}"; do
    case $lib in
        libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux-x86-64.so.2) ;;
        *) bad+=("$lib") ;;
    esac
done
say "NEEDED: ${NEEDED[*]}"
((${#bad[@]} == 0)) || die "needs shared libraries beyond glibc: ${bad[*]} (not on every execute point)"

# Every symbol version the binary requires (the .gnu.version_r section), e.g. GLIBC_2.3.4.
mapfile -t VERSIONS < <(readelf -V -W "$BUILT" | sed -n 's/.* Name: \([^ ]*\) .*Flags:.*/\1/p' | sort -u)
((${#VERSIONS[@]} > 0)) || die "readelf -V found no symbol versions (is the binary static?)"
nonglibc=()
for v in "${VERSIONS[@]}"; do [[ $v =~ ^GLIBC_[0-9]+(\.[0-9]+)*$ ]] || nonglibc+=("$v"); done
((${#nonglibc[@]} == 0)) || die "requires symbol versions other than public GLIBC_x.y: ${nonglibc[*]} (libgcc_s? libstdc++? GLIBC_PRIVATE?)"
MAX_GLIBC=$(printf '%s\n' "${VERSIONS[@]}" | sed 's/^GLIBC_//' | sort -V | tail -1)
if [[ $(printf '%s\n%s\n' "$MAX_GLIBC" "$GLIBC" | sort -V | tail -1) != "$GLIBC" ]]; then
    # Name the symbols that pull the version up.
    objdump -T "$BUILT" | grep -F "GLIBC_$MAX_GLIBC" | sed 's/^/  /' >&2 || true
    die "requires GLIBC_$MAX_GLIBC, newer than $GLIBC"
fi
say "symbol versions required: ${VERSIONS[*]}"
say "highest: GLIBC_$MAX_GLIBC (limit $GLIBC): ok"
[[ -z $CHECK_ONLY ]] || exit 0

# --- result -------------------------------------------------------------------------
cp "$BUILT" "$BIN.tmp"
strip --strip-all "$BIN.tmp"
mv -f "$BIN.tmp" "$BIN"
"$BIN" --version >/dev/null || die "$BIN --version failed here"
"$BIN" --parse-only run --run-id dist-check -- true >/dev/null || die "$BIN --parse-only failed here"

size=$(stat -c %s "$BIN")
say "OK: ${BIN#"$ROOT"/}: $("$BIN" --version), $size bytes ($(( (size + 524288) / 1048576 )) MiB) stripped," \
    "needs GLIBC <= $MAX_GLIBC and only ${NEEDED[*]}; built in ${secs}s"
