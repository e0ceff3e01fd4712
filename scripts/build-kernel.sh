#!/usr/bin/env bash
# Build the guest kernel: an uncompressed x86-64 vmlinux for our microVMs.
#
#   scripts/build-kernel.sh [--smp] [--out PATH] [-j N] [--force]
#
# Recipe (see rootfs/kernel/README.md): Debian's linux-source-6.1, patches from
# rootfs/kernel/patches/, `make tinyconfig`, then the fragments
# rootfs/kernel/microvm.config + up.config (default) or smp.config (--smp),
# merged with merge_config.sh -m and `make olddefconfig`; every line of the
# fragments is checked against the final .config; then `make vmlinux`.
#
# Builds are cached under ${XDG_CACHE_HOME:-$HOME/.cache}/lambda-microvm/kernel/
# by a hash of the source package version, the fragments, the patches and this
# script: a repeated run prints the cached path at once.
#
# Stdout: only the vmlinux path, on the last line (the --out copy if given,
# otherwise <cache>/<hash>/vmlinux). Progress goes to stderr. Also kept at a
# stable path: <cache>/vmlinux (default kernel) or <cache>/vmlinux-smp.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KDIR="$REPO_ROOT/rootfs/kernel"
SELF="$REPO_ROOT/scripts/build-kernel.sh"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/lambda-microvm/kernel"

log() { printf '[build-kernel] %s\n' "$*" >&2; }
die() { printf '[build-kernel] error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF" >&2
}

smp=0
out=""
jobs="$(nproc 2>/dev/null || echo 2)"
force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --smp) smp=1 ;;
        --up) smp=0 ;;
        --out) [ $# -ge 2 ] || die "--out needs a path"; out="$2"; shift ;;
        --out=*) out="${1#--out=}" ;;
        -j) [ $# -ge 2 ] || die "-j needs a number"; jobs="$2"; shift ;;
        -j*) jobs="${1#-j}" ;;
        --jobs=*) jobs="${1#--jobs=}" ;;
        --force) force=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage; die "unknown argument: $1" ;;
    esac
    shift
done
case "$jobs" in ''|*[!0-9]*|0) die "bad job count: $jobs" ;; esac

if [ "$smp" = 1 ]; then
    variant=smp
    stable_name=vmlinux-smp
else
    variant=up
    stable_name=vmlinux
fi
fragments=("$KDIR/microvm.config" "$KDIR/$variant.config")
for f in "${fragments[@]}"; do [ -f "$f" ] || die "missing config fragment: $f"; done
shopt -s nullglob
patches=("$KDIR"/patches/*.patch)
shopt -u nullglob

# --- Installing what the build needs ------------------------------------------------

# "<check> <package>": a command name, or an absolute path that must exist.
BUILD_DEPS=(
    "gcc gcc"
    "make make"
    "/usr/include/stdio.h libc6-dev"
    "flex flex"
    "bison bison"
    "bc bc"
    "perl perl"
    "xz xz-utils"
    "cpio cpio"
    "/usr/include/libelf.h libelf-dev"
    "/usr/include/openssl/ssl.h libssl-dev"
    "flock util-linux"
    "sha256sum coreutils"
)

have() {
    case "$1" in
        /*) [ -e "$1" ] ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

src_installed() {
    [ -f "$SRC_TARBALL" ] &&
        dpkg-query -W -f='${Status}' "$SRC_PKG" 2>/dev/null | grep -q 'install ok installed'
}

# install_missing [all]: the kernel source always; the build tools with "all".
install_missing() {
    local missing=() names=() dep check pkg
    src_installed || { missing+=("$SRC_PKG"); names+=("$SRC_TARBALL"); }
    if [ "${1:-}" = all ]; then
        for dep in "${BUILD_DEPS[@]}"; do
            check="${dep% *}"; pkg="${dep#* }"
            if ! have "$check"; then missing+=("$pkg"); names+=("$check"); fi
        done
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    log "missing: ${names[*]}; installing packages: ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 ||
        die "missing ${names[*]} and no apt-get to install it; install the packages ${missing[*]}"
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            die "missing ${names[*]}; cannot install (not root, no passwordless sudo). Run: apt-get install ${missing[*]}"
        fi
    fi
    local apt_log
    apt_log="$(mktemp /tmp/build-kernel-apt.XXXXXX)"
    if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
           "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
               --no-install-recommends "${missing[@]}"; } </dev/null >"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        die "apt-get could not install ${missing[*]} (needed for: ${names[*]}); log: $apt_log"
    fi
    rm -f "$apt_log"
    src_installed || die "$SRC_TARBALL still missing after installing $SRC_PKG"
    if [ "${1:-}" = all ]; then
        for dep in "${BUILD_DEPS[@]}"; do
            have "${dep% *}" || die "still missing after apt-get install: ${dep% *} (package ${dep#* })"
        done
    fi
}

# --- Cache key and fast path ---------------------------------------------------------

install_missing   # the source package version is part of the key
src_version="$(dpkg-query -W -f='${Version}' "$SRC_PKG")"

cache_key() {
    {
        printf 'source %s %s\nvariant %s\n' "$SRC_PKG" "$src_version" "$variant"
        local f
        for f in "${fragments[@]}" ${patches[@]+"${patches[@]}"} "$SELF"; do
            printf '== %s\n' "${f#"$REPO_ROOT"/}"
            cat "$f"
        done
    } | sha256sum | cut -c1-16
}
hash="$(cache_key)"
build_root="$CACHE_ROOT/$hash"
result="$build_root/vmlinux"

publish() {
    mkdir -p "$CACHE_ROOT"
    ln -sfn "$hash/vmlinux" "$CACHE_ROOT/$stable_name.tmp"
    mv -Tf "$CACHE_ROOT/$stable_name.tmp" "$CACHE_ROOT/$stable_name"
    if [ -n "$out" ]; then
        mkdir -p "$(dirname "$out")"
        cp -f "$result" "$out.tmp.$$"
        mv -f "$out.tmp.$$" "$out"
        printf '%s\n' "$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
    else
        printf '%s\n' "$result"
    fi
}

if [ "$force" = 0 ] && [ -f "$result" ]; then
    log "cached ($variant, $SRC_PKG $src_version, key $hash)"
    publish
    exit 0
fi

# --- Build ---------------------------------------------------------------------------

install_missing all
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
if ! flock -n 9; then
    log "another kernel build is running; waiting for $CACHE_ROOT/.lock"
    flock 9
fi
if [ "$force" = 0 ] && [ -f "$result" ]; then   # built while we waited
    log "cached ($variant, key $hash)"
    publish
    exit 0
fi

mkdir -p "$build_root"
build_log="$build_root/build.log"
: >"$build_log"
start=$SECONDS

# run <stage description> <command...>: output to the build log, tail on failure.
run() {
    local what="$1"; shift
    printf '\n### %s\n### %s\n' "$what" "$*" >>"$build_log"
    if ! "$@" >>"$build_log" 2>&1 </dev/null; then
        tail -n 40 "$build_log" >&2
        die "$what failed (full log: $build_log)"
    fi
}

# One unpacked, patched source tree per (source version, patches), shared by both
# variants; one out-of-tree object directory per variant (make O=...), so a changed
# fragment rebuilds incrementally. Trees for other source keys are removed (~1.5 GB
# each); the vmlinux files built from them stay cached.
src_key="$(
    { printf '%s %s\n' "$SRC_PKG" "$src_version"
      for p in ${patches[@]+"${patches[@]}"}; do printf '== %s\n' "${p##*/}"; cat "$p"; done
    } | sha256sum | cut -c1-16)"
tree="$CACHE_ROOT/src-$src_key"
objdir="$CACHE_ROOT/obj-$variant"
for old in "$CACHE_ROOT"/src-*; do
    if [ -d "$old" ] && [ "$old" != "$tree" ]; then
        log "removing old source tree $old"
        rm -rf "$old"
    fi
done

if [ ! -f "$tree/.prepared" ]; then
    rm -rf "$tree" "$tree.unpack"
    mkdir -p "$tree.unpack"
    log "unpacking $SRC_TARBALL ($src_version) into $tree"
    run "unpack $SRC_TARBALL" tar -xJf "$SRC_TARBALL" -C "$tree.unpack"
    mv "$tree.unpack/linux-source-6.1" "$tree"
    rmdir "$tree.unpack"
    for p in ${patches[@]+"${patches[@]}"}; do
        log "applying ${p##*/}"
        run "patch ${p##*/}" patch -p1 --forward --batch -d "$tree" -i "$p"
    done
    touch "$tree/.prepared"
fi
if [ "$(cat "$objdir/.src-key" 2>/dev/null)" != "$src_key" ]; then
    rm -rf "$objdir"
    mkdir -p "$objdir"
    printf '%s\n' "$src_key" >"$objdir/.src-key"
else
    log "reusing objects in $objdir (incremental build)"
fi

export KBUILD_BUILD_USER=builder KBUILD_BUILD_HOST=lambda-microvm
export KBUILD_BUILD_TIMESTAMP="$SRC_PKG $src_version"
kmake=(make -C "$tree" O="$objdir" ARCH=x86_64)

log "configuring: tinyconfig + ${fragments[*]##*/}"
run "make tinyconfig" "${kmake[@]}" tinyconfig
run "merge_config.sh" env -C "$objdir" ARCH=x86_64 \
    "$tree/scripts/kconfig/merge_config.sh" -m -O "$objdir" "$objdir/.config" "${fragments[@]}"
run "make olddefconfig" "${kmake[@]}" olddefconfig

# Every line the fragments ask for must be in the final .config as written.
log "checking the final .config against the fragments"
dropped=()
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            opt="${line%%=*}"
            grep -qxF -- "$line" "$objdir/.config" ||
                dropped+=("$line (final: $(grep -E "^(# )?$opt[= ]" "$objdir/.config" || echo 'absent'))")
            ;;
        "# CONFIG_"*" is not set")
            opt="${line#\# }"; opt="${opt%% *}"
            if grep -qE "^$opt=" "$objdir/.config"; then
                dropped+=("$line (final: $(grep -E "^$opt=" "$objdir/.config"))")
            fi
            ;;
    esac
done < <(cat "${fragments[@]}")
if [ ${#dropped[@]} -gt 0 ]; then
    for d in "${dropped[@]}"; do log "Kconfig did not keep: $d"; done
    die "the final .config lacks ${#dropped[@]} requested option(s) (unmet dependency or bad value?); see $objdir/.config"
fi
cp "$objdir/.config" "$build_root/config"

log "compiling vmlinux with $jobs job(s) (several minutes; log: $build_log)"
run "make vmlinux" "${kmake[@]}" -j"$jobs" vmlinux

file_type="$(head -c 5 "$objdir/vmlinux" | od -An -c | tr -d ' ')"
[ "$file_type" = '177ELF002' ] || die "$objdir/vmlinux is not a 64-bit ELF file"
cp -f "$objdir/vmlinux" "$result.tmp"
mv -f "$result.tmp" "$result"
log "built $result ($(du -h "$result" | cut -f1)) in $((SECONDS - start)) s"
publish
