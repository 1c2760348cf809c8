#!/bin/sh
# A shell client of `vision-agent jsonl` with jq: ask about an image, then follow up in the same conversation.
#   sh examples/jsonl.sh [IMAGE] [vision-agent flags…]      (default: examples/shapes.png on the demo model)
# The answer streams to stdout; the follow-up needs the first answer's conversation_id, so the two prompts talk
# to one server through a FIFO.
set -eu
image=${1:-$(dirname "$0")/shapes.png}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] || set -- -m demo --no-tools
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkfifo "$dir/in"

vision-agent jsonl "$@" < "$dir/in" | {
  exec 3> "$dir/in"   # the server's stdin: closed (EOF) at the end, so it exits 0
  jq -cn --arg img "$image" '{id: "q1", prompt: "What is in this image?", images: [$img]}' >&3
  while IFS= read -r line; do
    type=$(printf '%s' "$line" | jq -r .type)
    id=$(printf '%s' "$line" | jq -r '.id // empty')
    case $type in
      # model output is untrusted: control characters (escape sequences) are dropped before printing
      token) printf '%s' "$line" | jq -j 'select(.part == "answer") | .text' | tr -d '\000-\010\013-\037\177' ;;
      error) printf '\nerror %s\n' "$(printf '%s' "$line" | jq -r '"\(.code): \(.message)"')" >&2; exit 1 ;;
      done)
        printf '\n'
        if [ "$id" = q1 ]; then
          cid=$(printf '%s' "$line" | jq -r .conversation_id)
          jq -cn --arg cid "$cid" '{id: "q2", prompt: "What colours stand out?", conversation: $cid}' >&3
        else
          printf '%s' "$line" | jq -c '{usage}' >&2
          exec 3>&-
        fi ;;
    esac
  done
}
