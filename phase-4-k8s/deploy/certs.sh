#!/usr/bin/env bash
# The TLS Secrets deploy/base mounts, made with openssl and applied with kubectl:
#   audio-tracer-collector-tls  tls.crt, tls.key: the certificate every collector replica
#                               presents (DNS names audio-tracer-collector, the name the agents
#                               check, its .NAMESPACE.svc forms, and *.audio-tracer-collector.
#                               NAMESPACE.svc[.cluster.local]: each replica's own name, however
#                               many there are); ca.crt
#   audio-tracer-agent-tls      ca.crt, and per node NODE.crt and NODE.key: a client
#                               certificate whose DNS subjectAltName is the node's name, which
#                               is the only name the collector takes that agent's batches for
#
# Usage: certs.sh [--namespace NS] [--dir DIR] [--ca-secret NAME] [--no-apply] [NODE...]
#   NODE...          the nodes to certify (default: every node of the cluster, kubectl get nodes)
#   --dir DIR        where the CA, keys and certificates are kept (default ./audio-tracer-pki).
#                    It holds the CA's private key: keep it somewhere safe. A second run reuses
#                    what is there and only adds what is missing (a new node: run it again; the
#                    new node's agent finds its files once kubelet refreshes the Secret).
#   --ca-secret NAME sign with the CA in that Secret (tls.crt, tls.key) instead, and leave the
#                    collector's Secret alone: overlays/cert-manager, where cert-manager keeps
#                    the CA and the collector's certificate
#   --no-apply       write the files and DIR/secrets.yaml, touch no cluster
#
# Limits (deploy/README.md, "Mutual TLS"): every agent pod mounts every node's key, since one
# DaemonSet has one pod template; a Secret holds at most 1 MiB, about 1000 nodes' worth.
set -euo pipefail

namespace=audio-tracer
dir=./audio-tracer-pki
ca_secret=
apply=1
nodes=()
while (($#)); do
    case $1 in
        --namespace) namespace=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --ca-secret) ca_secret=$2; shift 2 ;;
        --no-apply) apply=; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "certs.sh: unknown flag $1 (--help)" >&2; exit 2 ;;
        *) nodes+=("$1"); shift ;;
    esac
done
if ((${#nodes[@]} == 0)); then
    [[ $apply ]] || { echo "certs.sh: --no-apply needs the node names" >&2; exit 2; }
    read -ra nodes <<<"$(kubectl get nodes -o 'jsonpath={.items[*].metadata.name}')"
    ((${#nodes[@]})) || { echo "certs.sh: the cluster lists no nodes" >&2; exit 1; }
fi
for node in "${nodes[@]}"; do
    # A Kubernetes node name (DNS subdomain): also a valid DNS SAN and Secret key.
    [[ $node =~ ^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$ ]] ||
        { echo "certs.sh: $node is not a Kubernetes node name" >&2; exit 2; }
done

mkdir -p "$dir/nodes"
chmod 700 "$dir"
cd "$dir"
umask 077
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

if [[ $ca_secret ]]; then
    for key in tls.crt tls.key; do
        kubectl -n "$namespace" get secret "$ca_secret" -o "jsonpath={.data.${key//./\\.}}" |
            base64 -d >"ca.${key#tls.}"
    done
elif [[ ! -f ca.key ]]; then
    # rustls wants basicConstraints CA:TRUE on the CA.
    openssl req -x509 "${ec[@]}" -days 3650 -subj /CN=audio-tracer-ca -keyout ca.key -out ca.crt \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        2>/dev/null
fi

# leaf NAME SUBJECT_CN EXTENSIONS: NAME.key and NAME.crt signed by the CA, unless both exist.
leaf() {
    [[ -f $1.crt && -f $1.key ]] && return
    openssl req "${ec[@]}" -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
        -extfile <(printf '%s\n' "$3") -out "$1.crt" 2>/dev/null
    rm "$1.csr"
}

if [[ ! $ca_secret ]]; then
    svc=audio-tracer-collector
    names=("$svc" "$svc.$namespace.svc" "$svc.$namespace.svc.cluster.local")
    # Replica N of the StatefulSet is $svc-N.$svc.$namespace.svc: one wildcard for them all, so
    # that scaling needs no new certificate.
    names+=("*.$svc.$namespace.svc" "*.$svc.$namespace.svc.cluster.local")
    san=$(IFS=,; echo "${names[*]/#/DNS:}")
    leaf collector $svc "subjectAltName=$san
extendedKeyUsage=serverAuth"
fi
agent_files=(--from-file=ca.crt=ca.crt)
for node in "${nodes[@]}"; do
    leaf "nodes/$node" "$node" "subjectAltName=DNS:$node
extendedKeyUsage=clientAuth"
    agent_files+=("--from-file=$node.crt=nodes/$node.crt" "--from-file=$node.key=nodes/$node.key")
done

# The Secrets as YAML (client-side: no cluster needed), then applied.
secret() { kubectl -n "$namespace" create secret generic "$@" --dry-run=client -o yaml; }
{
    if [[ ! $ca_secret ]]; then
        secret audio-tracer-collector-tls --from-file=tls.crt=collector.crt \
            --from-file=tls.key=collector.key --from-file=ca.crt=ca.crt
        echo ---
    fi
    secret audio-tracer-agent-tls "${agent_files[@]}"
} >secrets.yaml
if [[ $apply ]]; then
    kubectl apply -f secrets.yaml
else
    echo "certs.sh: wrote $dir/secrets.yaml (${#nodes[@]} nodes)"
fi
