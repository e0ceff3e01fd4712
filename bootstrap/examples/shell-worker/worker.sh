#!/bin/sh
# A worker of the `bootstrap` binary in POSIX sh (bootstrap/WORKER_PROTOCOL.md).
#
# Echoes each event back; an event with "action":"error" fails with its "message",
# "action":"context" returns the invocation's context, and "action":"crash" exits with status 3
# mid-invoke. Frames come in on stdin and answers go out on stdout, so anything else this script
# prints must go to stderr (>&2).
set -u

body=$(mktemp) || exit 1
trap 'rm -f "$body"' EXIT

# send VERB BODY_FILE [HEADER_LINE...]: one frame on stdout.
# sh has no local variables, hence the prefixed names.
send() {
    send_verb=$1 send_file=$2
    shift 2
    send_len=$(wc -c < "$send_file" | tr -d ' ')
    {
        printf '%s\n' "$send_verb"
        for send_header in "$@"; do printf '%s\n' "$send_header"; done
        printf 'Content-Length: %s\n\n' "$send_len"
        cat "$send_file"
    }
}

# send_text VERB TEXT [HEADER_LINE...]: a frame whose body is TEXT.
send_text() {
    send_text_verb=$1
    printf '%s' "$2" > "$body"
    shift 2
    send "$send_text_verb" "$body" "$@"
}

if [ "${ECHO_FAIL_INIT:-}" = 1 ]; then
    send_text INIT_ERROR 'init failed on purpose (ECHO_FAIL_INIT=1)' 'Error-Type: ShellInitError'
    exit 1
fi
send_text READY '' 'Protocol: 1'

cr=$(printf '\r')
while IFS= read -r verb; do
    verb=${verb%"$cr"}
    [ -z "$verb" ] && continue
    length=0 request_id='' deadline_ms=0 function_arn=''
    while IFS= read -r line; do
        line=${line%"$cr"}
        [ -z "$line" ] && break
        # Trimmed with parameter expansion, not a subprocess: in a microVM on this machine's
        # emulated KVM every fork costs seconds.
        value=${line#*:}
        value=${value#"${value%%[! 	]*}"}
        value=${value%"${value##*[! 	]}"}
        case $line in
            [Cc]ontent-[Ll]ength:*) length=$value ;;
            [Rr]equest-[Ii]d:*) request_id=$value ;;
            [Dd]eadline-[Mm]s:*) deadline_ms=$value ;;
            [Ii]nvoked-[Ff]unction-[Aa]rn:*) function_arn=$value ;;
        esac
    done
    # The runtime sends nothing more until we answer, so head cannot read past the body.
    head -c "$length" > "$body"

    case $verb in
        INVOKE)
            if grep -q '"action"[[:space:]]*:[[:space:]]*"crash"' "$body"; then
                exit 3
            elif grep -q '"action"[[:space:]]*:[[:space:]]*"context"' "$body"; then
                # The values are ids, numbers and names without quotes or backslashes, so they
                # need no JSON escaping.
                send_text RESPONSE "$(printf '{"request_id":"%s","function_arn":"%s","deadline_ms":%s,"function_name":"%s","memory_mb":%s,"task_root":"%s","handler":"%s"}' \
                    "$request_id" "$function_arn" "${deadline_ms:-0}" "${AWS_LAMBDA_FUNCTION_NAME:-}" \
                    "${AWS_LAMBDA_FUNCTION_MEMORY_SIZE:-0}" "${LAMBDA_TASK_ROOT:-}" "${_HANDLER:-}")"
            elif grep -q '"action"[[:space:]]*:[[:space:]]*"error"' "$body"; then
                message=$(sed -n 's/.*"message"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$body")
                send_text ERROR "${message:-failed}" 'Error-Type: ShellError'
            else
                send RESPONSE "$body"
            fi
            ;;
        BEFORE_SNAPSHOT | AFTER_RESTORE)
            echo "shell-worker: $verb" >&2
            send_text OK ''
            ;;
        *)
            send_text ERROR "unknown verb $verb" 'Error-Type: ShellError'
            ;;
    esac
done
