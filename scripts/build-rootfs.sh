#!/usr/bin/env bash
# Builds a guest image for one function: the static `init` and `bootstrap` binaries, then the
# `build-rootfs` tool, which packs them with the function (and layers) into a reproducible
# initramfs (uncompressed newc cpio) and, with --ext4, an ext4 image. See rootfs/README.md.
#
#   scripts/build-rootfs.sh <function-dir> [--layer DIR|ZIP]... [--config PATH] [--init PATH]
#                           [--out PATH] [--ext4] [--ext4-size-mb N] [--no-busybox]
#
# The function directory holds function.json unless --config names another file; its `layers`
# (zip files or directories, relative to it) are merged into /opt first, then each --layer (a
# directory or a zip, as Lambda takes layers). --init takes a prebuilt static init instead of
# building the `init` package. The default output is
# target/rootfs/<function_name>.cpio; --ext4 also writes the same path with .ext4. The last line of
# stdout is the output path (the ext4 image with --ext4, after the cpio path). SOURCE_DATE_EPOCH,
# if set, becomes every entry's timestamp. The image gets Debian's static busybox (/bin/sh and
# the core tools, as a Lambda base image has them) unless --no-busybox.
set -euo pipefail

usage() {
    sed -n '2,16s/^# \{0,1\}//p' "$0" >&2
    exit "${1:-2}"
}

caller_pwd=$PWD
# Paths are taken relative to where the script was called from, before it moves to the repo root.
absolute() {
    case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$caller_pwd/$1" ;;
    esac
}

function_dir=""
config=""
init=""
out=""
ext4=0
ext4_size_mb=""
busybox=1
layers=()
while [ $# -gt 0 ]; do
    case "$1" in
    --layer) [ $# -ge 2 ] || usage; layers+=("$(absolute "$2")"); shift 2 ;;
    --config) [ $# -ge 2 ] || usage; config=$(absolute "$2"); shift 2 ;;
    --init) [ $# -ge 2 ] || usage; init=$(absolute "$2"); shift 2 ;;
    --out) [ $# -ge 2 ] || usage; out=$(absolute "$2"); shift 2 ;;
    --ext4) ext4=1; shift ;;
    --no-busybox) busybox=0; shift ;;
    --ext4-size-mb) [ $# -ge 2 ] || usage; ext4_size_mb=$2; shift 2 ;;
    -h | --help) usage 0 ;;
    -*) printf 'error: unknown option %s\n' "$1" >&2; usage ;;
    *)
        [ -z "$function_dir" ] || { printf 'error: more than one function directory\n' >&2; usage; }
        function_dir=$(absolute "$1")
        shift
        ;;
    esac
done
[ -n "$function_dir" ] || { printf 'error: no function directory given\n' >&2; usage; }

cd "$(dirname "$0")/.."
. scripts/lib/common.sh

[ -d "$function_dir" ] || die "function directory $function_dir does not exist or is not a directory"
[ -z "$init" ] || [ -f "$init" ] || die "--init $init: no such file"
ensure_cargo
[ "$ext4" -eq 0 ] || ensure_apt_packages e2fsprogs

target_dir=$(cargo_target_dir)
if [ -n "$init" ]; then
    bootstrap=$(build_static_bootstrap)
else
    # A checkout without the init crate gets a plain message. The metadata is read whole first:
    # `cargo metadata | grep -q` under pipefail fails at random when grep stops reading early.
    metadata="$(cargo metadata --no-deps --format-version 1)"
    grep -q '"name":"init",' <<<"$metadata" ||
        die "the init crate is missing: expected package \`init\` at init/ in the workspace; pass --init PATH to use a prebuilt static init"
    step "building the static init and bootstrap binaries"
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --profile guest --target "$STATIC_TARGET" -p bootstrap -p init >&2
    init="$target_dir/$STATIC_TARGET/guest/init"
    bootstrap="$target_dir/$STATIC_TARGET/guest/bootstrap"
    [ -x "$init" ] || die "cargo built package init but $init is missing (is its binary named init?)"
fi

step "building build-rootfs"
cargo build --quiet -p rootfs --bin build-rootfs >&2
builder="$target_dir/debug/build-rootfs"

config_args=()
[ -z "$config" ] || config_args=(--config "$config")
if [ -z "$out" ]; then
    # function_name is validated to [A-Za-z0-9_-]{1,64}, so it is safe in a path and the canonical
    # one-key-per-line JSON can be read with sed.
    name=$("$builder" --function "$function_dir" "${config_args[@]}" --print-config |
        sed -n 's/^  "function_name": "\(.*\)",$/\1/p')
    [ -n "$name" ] || die "could not read function_name from the function config"
    out="$target_dir/rootfs/$name.cpio"
fi
mkdir -p "$(dirname "$out")"

args=(--init "$init" --bootstrap "$bootstrap" --function "$function_dir" --out "$out" "${config_args[@]}")
for layer in "${layers[@]}"; do
    args+=(--layer "$layer")
done
if [ "$busybox" -eq 1 ]; then
    ensure_apt_packages busybox-static
    args+=(--busybox /bin/busybox)
fi
ext4_out=""
if [ "$ext4" -eq 1 ]; then
    ext4_out="${out%.cpio}.ext4"
    args+=(--ext4 "$ext4_out")
    [ -z "$ext4_size_mb" ] || args+=(--ext4-size-mb "$ext4_size_mb")
elif [ -n "$ext4_size_mb" ]; then
    die "--ext4-size-mb needs --ext4"
fi

step "packing $function_dir"
"$builder" "${args[@]}" >/dev/null
echo "$out"
[ -z "$ext4_out" ] || echo "$ext4_out"
