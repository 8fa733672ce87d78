#!/usr/bin/env bash
# The cost of TLS on the client API: the same workloads against a fresh 3-node loopback
# cluster in plaintext and with mutual TLS on the client and admin listeners (certificates
# made here with openssl; peers stay plaintext), alternated (plain, tls, plain, tls, ...)
# so both see the same machine weather. Every run reports the nodes' CPU per operation
# (--server-pids). Writes OUT/<plain|tls>-<round>-<workload>.{txt,json,svg}; each text
# starts with the load average and the exact command.
#
# Usage: bench/run-tls.sh [OUT]     (from the repository root)
# Environment: ROUNDS (default 2), DURATION (seconds per run, default 10),
#   WORKLOADS (default "churn-64 read-64"; any of churn-64 read-64 enter-1),
#   MODES (default "plain tls"; "peer-tls" adds peers over mutual TLS with plaintext
#   clients, each node presenting the same certificate for 127.0.0.1),
#   CONCLAVE, BENCH (default: built with `cargo build --release`).
set -euo pipefail

OUT=${1:-bench-results/tls-$(date -u +%Y%m%dT%H%M%SZ)}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
WORKLOADS=${WORKLOADS:-churn-64 read-64}
MODES=${MODES:-plain tls}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/cluster.sh
source "$HERE/cluster.sh"
begin_run tls
ensure_binaries

# A CA, one server certificate for 127.0.0.1 (shared by the three nodes) and a client one.
PKI="$WORK/pki"
mkdir -p "$PKI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=bench CA" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
issue() { # NAME EXTENSIONS
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" -keyout "$PKI/$1.key" -out "$PKI/$1.csr" 2>/dev/null
    printf '%b' "$2" >"$PKI/$1.ext"
    openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 30 \
        -out "$PKI/$1.crt" -extfile "$PKI/$1.ext" 2>/dev/null
}
issue server "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n"
issue client "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
SERVER_TLS=(--cert-file "$PKI/server.crt" --key-file "$PKI/server.key" --trusted-ca-file "$PKI/ca.crt" --client-cert-auth)
CLIENT_TLS=(--cacert "$PKI/ca.crt" --cert "$PKI/client.crt" --key "$PKI/client.key")
PEER_TLS=(--peer-cert-file "$PKI/server.crt" --peer-key-file "$PKI/server.key" --peer-trusted-ca-file "$PKI/ca.crt")

{
    echo "conclave: 3 nodes: $CONCLAVE serve --partitions 16 --session-timeout-ms 5000 [TLS: ${SERVER_TLS[*]}] [peer TLS: ${PEER_TLS[*]}]"
    echo "modes: $MODES"
    echo "machine: $(nproc) cores; $(machine_load)"
} | tee "$OUT/setup.txt"

workload() { # TAG WORKLOAD CLIENT-FLAGS...
    local tag=$1 name=$2 endpoints pids
    shift 2
    endpoints=$(conclave_endpoints)
    pids=$(IFS=,; echo "${CONCLAVE_NODE_PIDS[*]}")
    case $name in
        churn-64) bench_run "$tag-churn-64" churn --endpoints "$endpoints" -c 64 -e 1000 -d "$DURATION" --server-pids "$pids" "$@" ;;
        read-64) bench_run "$tag-read-64" read --endpoints "$endpoints" -c 64 -e 1000 -d "$DURATION" --server-pids "$pids" "$@" ;;
        enter-1) bench_run "$tag-enter-1" churn --endpoints "$endpoints" -c 1 -e 1000 -d "$DURATION" --server-pids "$pids" "$@" ;;
        *) echo "unknown workload $name" >&2; exit 2 ;;
    esac
}
for ((round = 1; round <= ROUNDS; round++)); do
    for mode in $MODES; do
        case $mode in
            plain) server=() client=() ;;
            tls) server=("${SERVER_TLS[@]}") client=("${CLIENT_TLS[@]}") ;;
            peer-tls) server=("${PEER_TLS[@]}") client=() ;;
            *) echo "unknown mode $mode" >&2; exit 2 ;;
        esac
        conclave_start 3 --partitions 16 --session-timeout-ms 5000 "${server[@]}"
        for w in $WORKLOADS; do workload "$mode-$round" "$w" "${client[@]}"; done
        conclave_stop
    done
done
echo "done: $OUT"
