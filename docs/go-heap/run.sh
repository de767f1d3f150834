#!/bin/sh
# Measures what hotel-reservation's Go runtime parameters rest on (docs/RESULTS.md, "The Go
# heaps, measured"): a gRPC service's live heap and its collections (GODEBUG=gctrace=1 lines
# on stderr: "A+B/C/D+E ms cpu" is each cycle's CPU), and a net/http server's heap per
# keep-alive connection. Needs Debian's golang-go and golang-google-grpc-dev (Go 1.19,
# grpc-go 1.33); builds in GOPATH mode from Debian's packaged sources. Not part of the build.
set -e
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
down=
trap '[ -z "$down" ] || kill $down 2>/dev/null; rm -rf "$work"' EXIT
for p in grpc http; do
    mkdir -p "$work/src/goheap/$p"
    cp "$here/$p/main.go" "$work/src/goheap/$p/"
    (cd "$work/src/goheap/$p" && GO111MODULE=off GOPATH="$work:/usr/share/gocode" go build -o "$work/$p" .)
done
# The cluster's pods had GOMAXPROCS = the node's 32 CPUs.
GOMAXPROCS=32 "$work/grpc" -mode down -addr 127.0.0.1:50052 &
down=$!
sleep 0.5
GOMAXPROCS=32 GODEBUG=gctrace=1 "$work/grpc" -mode server -secs 20 2> "$work/gctrace" &
server=$!
sleep 0.5
"$work/grpc" -mode load -rps 1000 -secs 21
wait $server
kill $down
down=
python3 - "$work/gctrace" <<'PY'
import re, sys
cpu = sorted(sum(map(float, m.groups()))
             for m in (re.search(r'([0-9.]+)\+([0-9.]+)/([0-9.]+)/([0-9.]+)\+([0-9.]+) ms cpu', l)
                       for l in open(sys.argv[1])) if m)
print(f"grpc: {len(cpu)} collections, CPU per collection median {cpu[len(cpu) // 2]:.2f} ms, max {cpu[-1]:.2f} ms")
PY
for users in 0 400 800 1500; do
    "$work/http" -mode server -secs 20 &
    server=$!
    sleep 0.3
    if [ "$users" -gt 0 ]; then
        "$work/http" -mode load -users "$users" -secs 21 &
        down=$!
    fi
    wait $server
    echo "  ($users clients)"
    [ -z "$down" ] || wait $down
    down=
done
