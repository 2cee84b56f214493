#!/usr/bin/env bash
# SSH through the proxy to each node, again and again, until stopped; one line per attempt in
# $LOOP_DIR/log: "<UTC time> OK <node>" or "<UTC time> FAIL <node> <what ssh said>".
# Before each round the client fetches what a client of the cluster holds: the host CA keys it
# trusts (tctl auth export --type=host, both during a host CA rotation) and a fresh user
# certificate (tctl auth sign --user), and connects with OpenSSH as `tsh config` sets it up.
# Usage: ssh-loop.sh CLUSTER PROXY USER NODE...
set -u
cluster=$1 proxy=$2 user=$3
shift 3
dir=${LOOP_DIR:-/root/ssh-loop}
mkdir -p "$dir"
log=$dir/log
cat > "$dir/config" <<CONFIG
Host *.${cluster} ${proxy}
    User root
    UserKnownHostsFile ${dir}/known_hosts
    IdentityFile ${dir}/key
    CertificateFile ${dir}/key-cert.pub
    IdentitiesOnly yes
    BatchMode yes
    ConnectTimeout 10
Host ${proxy}
    Port 3023
Host *.${cluster} !${proxy}
    Port 3022
    ProxyCommand ssh -F ${dir}/config -p 3023 %r@${proxy} -s proxy:%h:%p@${cluster}
CONFIG

stamp() { date -u +%Y-%m-%dT%H:%M:%S.%NZ; }

while true; do
    if ! trust=$(tctl auth export --type=host 2>&1) \
        || ! printf '%s\n' "$trust" | sed "s/^@cert-authority \([^ ]*\) /@cert-authority \1,${proxy} /" > "$dir/known_hosts" \
        || ! signed=$(tctl auth sign --user="$user" --out="$dir/key" --ttl=10m 2>&1); then
        echo "$(stamp) FAIL credentials ${trust:-} ${signed:-}" | tr '\n' ' ' >> "$log"
        echo >> "$log"
    else
        for node in "$@"; do
            out=$(ssh -F "$dir/config" "root@${node}.${cluster}" hostname 2>&1)
            if [[ "$out" == "$node" ]]; then
                echo "$(stamp) OK $node" >> "$log"
            else
                echo "$(stamp) FAIL $node $(echo "$out" | tr '\n' ' ')" >> "$log"
            fi
        done
    fi
    sleep 1
done
