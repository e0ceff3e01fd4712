#!/bin/sh
# A worker of the `bootstrap` binary in POSIX sh (bootstrap/WORKER_PROTOCOL.md).
#
# Echoes each event back; an event with "action":"error" fails with its "message",
# "action":"context" returns the invocation's context, and "action":"crash" exits with status 3
# mid-invoke. Frames come in on stdin and answers go out on stdout, so anything else this script
# prints must go to stderr (>&2).
#
# It starts as few processes as it can (`head` to read exactly a body's bytes, `cat` to send an
# event back as it came), everything else is the shell's own: in a microVM on this project's
# emulated KVM every process costs about a second.
set -u
# ${#text} then counts bytes, as Content-Length does.
LC_ALL=C
export LC_ALL

body=${TMPDIR:-/tmp}/shell-worker.$$
trap 'rm -f "$body"' EXIT

# frame VERB LENGTH [HEADER_LINE...]: a frame's verb and headers, up to its body.
frame() {
    frame_verb=$1 frame_len=$2
    shift 2
    printf '%s\n' "$frame_verb"
    for frame_header in "$@"; do printf '%s\n' "$frame_header"; done
    printf 'Content-Length: %s\n\n' "$frame_len"
}

# send_text VERB TEXT [HEADER_LINE...]: a frame whose body is TEXT.
send_text() {
    send_verb=$1 send_body=$2
    shift 2
    frame "$send_verb" "${#send_body}" "$@"
    printf '%s' "$send_body"
}

if [ "${ECHO_FAIL_INIT:-}" = 1 ]; then
    send_text INIT_ERROR 'init failed on purpose (ECHO_FAIL_INIT=1)' 'Error-Type: ShellInitError'
    exit 1
fi
send_text READY '' 'Protocol: 1'

while IFS= read -r verb; do
    [ -z "$verb" ] && continue
    length=0 request_id='' deadline_ms=0 function_arn=''
    while IFS= read -r line; do
        [ -z "$line" ] && break
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
    # The event's first line (all of it, for JSON on one line) to look at.
    event=''
    IFS= read -r event < "$body" || true

    case $verb in
        INVOKE)
            case $event in
                *'"action":"crash"'* | *'"action": "crash"'*)
                    exit 3
                    ;;
                *'"action":"context"'* | *'"action": "context"'*)
                    # The values are ids, numbers and names without quotes or backslashes, so
                    # they need no JSON escaping.
                    context="{\"request_id\":\"$request_id\",\"function_arn\":\"$function_arn\""
                    context="$context,\"deadline_ms\":${deadline_ms:-0}"
                    context="$context,\"function_name\":\"${AWS_LAMBDA_FUNCTION_NAME:-}\""
                    context="$context,\"memory_mb\":${AWS_LAMBDA_FUNCTION_MEMORY_SIZE:-0}"
                    context="$context,\"task_root\":\"${LAMBDA_TASK_ROOT:-}\""
                    context="$context,\"handler\":\"${_HANDLER:-}\"}"
                    send_text RESPONSE "$context"
                    ;;
                *'"action":"error"'* | *'"action": "error"'*)
                    message=''
                    case $event in
                        *'"message"'*)
                            message=${event#*'"message"'}
                            message=${message#*:}
                            message=${message#*'"'}
                            message=${message%%'"'*}
                            ;;
                    esac
                    send_text ERROR "${message:-failed}" 'Error-Type: ShellError'
                    ;;
                *)
                    frame RESPONSE "$length"
                    cat "$body"
                    ;;
            esac
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
