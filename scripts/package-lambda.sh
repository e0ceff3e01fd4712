#!/usr/bin/env bash
# Builds a Lambda deployment package (zip) for a provided.al2023 function on x86_64.
#
#   scripts/package-lambda.sh FUNCTION_DIR [-o OUT.zip] [--handler NAME] [--bin NAME]
#                             [--max-zipped BYTES] [--max-unzipped BYTES]
#
# FUNCTION_DIR is either
#   - a Rust crate (it has a Cargo.toml) on the `bootstrap` library: its binary, built static,
#     becomes the package's `bootstrap` (--bin picks one when the crate has several); or
#   - a worker directory: every file in it (except dot-files, __pycache__ and function.json) goes
#     into the package beside our static `bootstrap` binary, which starts the worker that
#     `_HANDLER` names (bootstrap/WORKER_PROTOCOL.md).
#
# The handler is --handler, else the `handler` of FUNCTION_DIR/function.json; for a crate without
# either it is the binary's name (our library does not read `_HANDLER`, but Lambda wants a value).
# Set it as the function's Handler on Lambda. The package carries it in its own function.json.
#
# The static `bootstrap` for workers is $BOOTSTRAP_BIN when that is set (scripts/test.sh sets it),
# else it is built. Binaries are stripped of symbols: Lambda downloads the package on every cold
# start.
#
# The zip is deterministic (bytes depend only on the inputs) and checked against Lambda's limits,
# 50 MB zipped and 250 MB unzipped (--max-zipped, --max-unzipped lower them, for tests). On
# failure nothing is left at the output path. Prints the zip's path as the last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib/common.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }

function_dir="" out="" handler="" bin="" limits=()
while [ $# -gt 0 ]; do
    case $1 in
        -o | --output) out=${2:?"$1 needs a path"}; shift 2 ;;
        --handler) handler=${2:?"--handler needs a name"}; shift 2 ;;
        --bin) bin=${2:?"--bin needs a name"}; shift 2 ;;
        --max-zipped | --max-unzipped) limits+=("$1" "${2:?"$1 needs a byte count"}"); shift 2 ;;
        -h | --help) usage 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$function_dir" ] || die "one function directory only (got $function_dir and $1)"
           function_dir=$1; shift ;;
    esac
done
[ -n "$function_dir" ] || usage
[ -d "$function_dir" ] || die "$function_dir is not a directory"
function_dir="$(cd "$function_dir" && pwd)"
[ -z "$out" ] || out="$(cd "$(dirname "$out")" 2>/dev/null && pwd)/$(basename "$out")" \
    || die "the directory of $out does not exist"

command -v python3 >/dev/null || ensure_apt_packages python3
command -v strip >/dev/null || ensure_apt_packages binutils
ensure_cargo
cd "$here/.."
[ -n "$out" ] || out="$(cargo_target_dir)/lambda/$(basename "$function_dir").zip"

config=""
[ -f "$function_dir/function.json" ] && config="$function_dir/function.json"
if [ -z "$handler" ] && [ -n "$config" ]; then
    handler="$(python3 -c 'import json,sys; h=json.load(open(sys.argv[1])).get("handler"); print(h if isinstance(h, str) else "")' "$config")" \
        || die "cannot read $config"
fi

staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT

# Builds the crate static for $STATIC_TARGET and prints its binary's path, from cargo's own
# account of what it built (the crate may live in any workspace, with any target directory).
build_crate() {
    step "building $function_dir static for $STATIC_TARGET"
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release --target "$STATIC_TARGET" \
        --manifest-path "$function_dir/Cargo.toml" ${bin:+--bin "$bin"} \
        --message-format=json-render-diagnostics >"$staging/cargo.json"
    python3 - "$staging/cargo.json" "$function_dir/Cargo.toml" <<'PY'
import json, os, sys
messages, manifest = sys.argv[1], os.path.realpath(sys.argv[2])
bins = []
for line in open(messages):
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m.get("executable")
            and "bin" in m["target"]["kind"]
            and os.path.realpath(m.get("manifest_path", "")) == manifest):
        bins.append(m["executable"])
if len(bins) != 1:
    sys.exit("error: expected one binary from %s, got %d (%s); pick one with --bin"
             % (manifest, len(bins), ", ".join(os.path.basename(b) for b in bins) or "none"))
print(bins[0])
PY
}

worker_args=()
if [ -f "$function_dir/Cargo.toml" ]; then
    binary="$(build_crate)"
    [ -n "$handler" ] || handler="$(basename "$binary")"
else
    [ -n "$handler" ] || die "no handler for $function_dir: pass --handler NAME or give it a function.json with \"handler\" (the worker executable, see bootstrap/WORKER_PROTOCOL.md)"
    if [ -n "${BOOTSTRAP_BIN:-}" ]; then
        [ -x "$BOOTSTRAP_BIN" ] || die "BOOTSTRAP_BIN=$BOOTSTRAP_BIN is not an executable"
        binary="$BOOTSTRAP_BIN"
    else
        binary="$(build_static_bootstrap)"
    fi
    worker_args=(--worker-dir "$function_dir")
fi
# A static-pie binary has neither a program interpreter nor shared-library dependencies. The
# headers are read whole first: `readelf | grep -q` under pipefail fails at random when grep
# stops reading early and readelf dies of SIGPIPE.
headers="$(readelf -ld "$binary" 2>&1)" || die "$binary: cannot read its ELF headers: $headers"
if grep -qE "program interpreter|\(NEEDED\)" <<<"$headers"; then
    die "$binary is dynamically linked; the package needs a static binary (-C target-feature=+crt-static)"
fi
strip --strip-all -o "$staging/bootstrap" "$binary"

step "packaging $function_dir into $out"
python3 "$here/lib/lambda_zip.py" --out "$out" --bootstrap "$staging/bootstrap" \
    --handler "$handler" ${config:+--config "$config"} "${worker_args[@]}" "${limits[@]}" \
    || die "no package written for $function_dir"
step "on Lambda: runtime provided.al2023, architecture x86_64, handler $handler"
echo "$out"
