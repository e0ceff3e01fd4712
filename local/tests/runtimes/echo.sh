#!/bin/sh
# A Lambda runtime in POSIX shell and curl, run behind the real server by rapid's integration
# tests. Events are matched as text, so tests send them compact. What it does with an event:
#   {"action":"sleep","s":"S"}   sleeps S seconds, then answers {"slept":true}
#   {"action":"crash"}           exits with status 3 mid-invoke, without answering
#   {"action":"error"}           posts an error, without Lambda-Runtime-Function-Error-Type
#   {"action":"big","bytes":N}   answers a JSON string of N 'a's (N + 2 bytes)
#   {"action":"pid"}             answers {"pid":P}, P being its own pid (its process group)
#   {"action":"alloc","mb":N}    a child holds N MB of memory, exits, then answers {"allocated":N}
#   {"action":"grow","mb":N}     the runtime itself holds N MB (a string), then answers {"grew":N}
#   {"action":"setsid"}          starts `setsid sleep 120` (a new session, out of the runtime's
#                                process group) and answers {"orphan":P}, P being its pid
#   {"action":"forks","n":N}     starts N processes (sleep 30) at once in a session of their own,
#                                kills them, answers {"forks":"done"}
#   anything else                answered unchanged
# With RUNTIME_FAIL_INIT=1 it posts init/error and exits instead of polling. With
# ECHO_KEEP_DIR=DIR it keeps a copy of each event's bytes, as received, in DIR/REQUEST_ID.
set -u
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
work=$(mktemp -d) || exit 1
trap 'rm -rf "$work"' EXIT

if [ "${RUNTIME_FAIL_INIT:-0}" = 1 ]; then
    echo "runtime: failing init"
    curl -sS -o /dev/null -X POST \
        -H 'Lambda-Runtime-Function-Error-Type: Runtime.InitError' \
        --data-binary '{"errorMessage":"init failed on purpose","errorType":"InitFailed"}' \
        "$api/init/error"
    exit 1
fi
echo "runtime: init pid $$"

while :; do
    curl -sS -D "$work/headers" -o "$work/event" "$api/invocation/next" || exit 1
    id=$(tr -d '\r' <"$work/headers" | sed -n 's/^[Ll]ambda-[Rr]untime-[Aa]ws-[Rr]equest-[Ii]d: *//p')
    event=$(head -c 200 "$work/event")
    echo "runtime: got $id"
    if [ -n "${ECHO_KEEP_DIR:-}" ]; then cp "$work/event" "$ECHO_KEEP_DIR/$id"; fi
    out="$work/event"
    case "$event" in
    *'"action":"sleep"'*)
        sleep "$(printf '%s' "$event" | sed 's/.*"s":"\([0-9.]*\)".*/\1/')"
        printf '{"slept":true}' >"$work/out"
        out="$work/out"
        ;;
    *'"action":"crash"'*)
        exit 3
        ;;
    *'"action":"error"'*)
        curl -sS -o /dev/null -X POST \
            --data-binary '{"errorMessage":"failed on purpose","errorType":"HandlerError","stackTrace":["a","b"]}' \
            "$api/invocation/$id/error"
        continue
        ;;
    *'"action":"big"'*)
        n=$(printf '%s' "$event" | sed 's/.*"bytes":\([0-9]*\).*/\1/')
        { printf '"'; head -c "$n" /dev/zero | tr '\0' a; printf '"'; } >"$work/out"
        out="$work/out"
        ;;
    *'"action":"alloc"'*)
        mb=$(printf '%s' "$event" | sed 's/.*"mb":\([0-9]*\).*/\1/')
        # tail keeps a line that never ends in memory: N MB of zeros is one such line.
        head -c "${mb}000000" /dev/zero | tail >/dev/null
        printf '{"allocated":%s}' "$mb" >"$work/out"
        out="$work/out"
        ;;
    *'"action":"grow"'*)
        mb=$(printf '%s' "$event" | sed 's/.*"mb":\([0-9]*\).*/\1/')
        big=$(head -c "${mb}000000" /dev/zero | tr '\0' a)
        printf '{"grew":%s}' "${#big}" >"$work/out"
        unset big
        out="$work/out"
        ;;
    *'"action":"setsid"'*)
        setsid sleep 120 >/dev/null 2>&1 &
        printf '{"orphan":%s}' "$!" >"$work/out"
        out="$work/out"
        ;;
    *'"action":"forks"'*)
        n=$(printf '%s' "$event" | sed 's/.*"n":\([0-9]*\).*/\1/')
        # A shell exits when it cannot fork: the bomb runs in a shell (and a process group) of
        # its own, so that the runtime survives it, and is killed as a group after.
        setsid sh -c "i=0; while [ \$i -lt $n ]; do sleep 30 & i=\$((i + 1)); done; wait" >/dev/null 2>&1 &
        bomb=$!
        wait "$bomb"
        kill -KILL "-$bomb" 2>/dev/null
        # Until they are gone, the runtime itself cannot fork (curl).
        while kill -0 "-$bomb" 2>/dev/null; do :; done
        printf '{"forks":"done"}' >"$work/out"
        out="$work/out"
        ;;
    *'"action":"pid"'*)
        printf '{"pid":%s}' "$$" >"$work/out"
        out="$work/out"
        ;;
    esac
    status=$(curl -sS -o /dev/null -w '%{http_code}' -X POST --data-binary "@$out" "$api/invocation/$id/response")
    [ "$status" = 202 ] || echo "runtime: the response for $id was refused with $status"
done
