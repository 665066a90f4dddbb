#!/bin/bash
# Run the bare-metal conformance guest (tests/guest) under a QEMU built with this
# series and a fresh sdeid v2 back-end (python -m sdeid.proto.serve).
#   run-conformance.sh QEMU [run-qemu options, e.g. --el2 --tests a,b]
# Cases that need a host trigger (SDEI-WAIT-TRIGGER) fail: the v2 back-end has
# no operator control socket yet.
set -u
qemu=$1; shift
repo=$(cd "$(dirname "$0")/../../.." && pwd)
tmp=$(mktemp -d)
trap 'kill $be 2>/dev/null; wait $be 2>/dev/null; rm -rf "$tmp"' EXIT
exec 9> >(cat > "$tmp/ready")
"$repo/.venv/bin/python" -m sdeid.proto.serve --socket-path "$tmp/be.sock" \
    --event 100:shared:normal --event 101:shared:critical \
    --event 200:private:normal --event 201:private:critical \
    --ready-fd 9 --log-level "${SDEID_LOG:-info}" 2> "$tmp/sdeid.log" &
be=$!
exec 9>&-
for _ in $(seq 100); do grep -q READY "$tmp/ready" 2>/dev/null && break; sleep 0.05; done
QEMU=$qemu "$repo/tests/guest/run-qemu" --qemu "$qemu" "$@" -- \
    -chardev socket,id=be,path="$tmp/be.sock",reconnect-ms=200 \
    -device smccc-user,chardev=be,fids=0xc4000020-0xc400003f
rc=$?
echo "--- sdeid log (tail)"; tail -"${SDEID_TAIL:-5}" "$tmp/sdeid.log"
exit $rc
