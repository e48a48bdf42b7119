#!/bin/bash
# The veth-pair tree measurement of docs/PERFORMANCE.md ("Files put in place on a thread of their
# own"): a tree of DIRS x FILES files of SIZE bytes sent with `chunk send` between two network
# namespaces of its own (198.18.0.1 -> 198.18.0.2, removed on exit), received through XDP.
# Prints the whole send's wall time and both sides' CPU. Root only.
#
#   docs/scripts/tree-veth.sh target/release/chunk
#   SRC=/var/tmp/tree COLD=1 docs/scripts/tree-veth.sh BIN      # from disk, page cache dropped
#   OUT=/var/tmp/tree-out docs/scripts/tree-veth.sh BIN          # into a disk directory
#   SIZE=102400 FILES=100 DIRS=10 SRC=/dev/shm/tree100k docs/scripts/tree-veth.sh BIN
#
# For a disk, prefer a fresh ext4 (as `truncate -s 2G /dev/shm/e.img; mkfs.ext4 -q -F
# /dev/shm/e.img; mount -o loop /dev/shm/e.img /mnt/e; OUT=/mnt/e/out ...`): on this machine's
# long-used root file system, every build spent 3-7 s of system time in ext4's inode allocator
# (`recently_deleted`) after the rm below, runs varied two-fold, and waiting did not help.
#
# SRC (default /dev/shm/chunk-tree-src) is made once and kept; OUT (default
# /dev/shm/chunk-tree-out) is emptied first. Compare two builds by running them in turn, several
# times: single runs vary by 10-20 % on a 2-vCPU VM.
set -euo pipefail
BIN=$(realpath "$1")
shift
DIRS=${DIRS:-100}
FILES=${FILES:-100}
SIZE=${SIZE:-4096}
SRC=${SRC:-/dev/shm/chunk-tree-src}
OUT=${OUT:-/dev/shm/chunk-tree-out}
A=chunk-tv-a
B=chunk-tv-b
LOG=
cleanup() {
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    [ -z "$LOG" ] || rm -rf "$LOG"
}
trap cleanup EXIT
cleanup
LOG=$(mktemp -d)
ip netns add "$A"
ip netns add "$B"
ip link add va netns "$A" type veth peer name vb netns "$B"
ip -n "$A" addr add 198.18.0.1/24 dev va
ip -n "$B" addr add 198.18.0.2/24 dev vb
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set va up
ip -n "$B" link set vb up
if [ ! -d "$SRC/tree" ]; then
    for d in $(seq -w 0 $((DIRS - 1))); do
        mkdir -p "$SRC/tree/d$d"
        for f in $(seq -w 0 $((FILES - 1))); do
            head -c "$SIZE" /dev/urandom >"$SRC/tree/d$d/f$f"
        done
    done
fi
rm -rf "$OUT"
mkdir -p "$OUT"
if [ -n "${COLD:-}" ]; then
    sync
    echo 3 >/proc/sys/vm/drop_caches
    "$BIN" --version >/dev/null # the binary itself back in the cache
fi
# Every file and directory ends a transfer: the receiver exits after the last.
ip netns exec "$B" /usr/bin/time -f "receiver CPU %U s user %S s sys" \
    "$BIN" recv --iface vb --out "$OUT" --exit-after $((DIRS * FILES + DIRS + 1)) \
    >"$LOG/recv" 2>&1 &
RPID=$!
sleep 1
start=$(date +%s.%N)
ip netns exec "$A" env CHUNK_PATH_CACHE= /usr/bin/time -f "sender CPU %U s user %S s sys" \
    "$BIN" send --quiet --to 198.18.0.2 "$SRC/tree" "$@" >"$LOG/send" 2>&1
end=$(date +%s.%N)
wait "$RPID" || true
echo "send took $(echo "$end - $start" | bc) s"
grep -h "CPU" "$LOG/send" "$LOG/recv"
