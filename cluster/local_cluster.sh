#!/usr/bin/env bash
# A local two-node Ray cluster on loopback, for trying `adaray submit` without a real cluster.
#
#   cluster/local_cluster.sh start|stop|status [--port 6379] [--dashboard-port 8265]
#
# Both nodes (one CPU each) run with token authentication: the token is $RAY_AUTH_TOKEN, the file
# $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (Ray generates it when missing). Clients need
# RAY_AUTH_MODE=token and the same token. The nodes reach each other on a loopback address and the
# dashboard listens on 127.0.0.1 only; Ray's own ports listen on every interface, behind the token.
#
# Each node is started in its own session, and `stop` ends exactly those sessions' processes:
# `ray stop` would end every Ray process on the machine, other users' and other tests' too.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status [--port 6379] [--dashboard-port 8265]" >&2; exit 2; }

action="${1:-}"
[[ "$action" =~ ^(start|stop|status)$ ]] || usage
shift
port=6379
dashboard_port=8265
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) [[ $# -ge 2 ]] || usage; port="$2"; shift 2 ;;
        --dashboard-port) [[ $# -ge 2 ]] || usage; dashboard_port="$2"; shift 2 ;;
        *) usage ;;
    esac
done
[[ "$port" =~ ^[0-9]+$ && "$dashboard_port" =~ ^[0-9]+$ ]] || usage

# Ray replaces 127.0.0.1 by the host's network address; any other loopback address is kept.
node_ip=127.0.0.2
# One folder per cluster (short: Ray's socket paths must stay under 108 characters). Keeping it out
# of /tmp/ray also keeps a plain `ray.init()` elsewhere from joining this cluster.
state_dir="/tmp/adaray-ray-$port"
export RAY_AUTH_MODE=token
export RAY_USAGE_STATS_ENABLED=0  # no reports to the internet

# Each node gets its own temp dir: two nodes on one machine that share runtime_resources/ delete
# each other's unpacked working_dir (a submitted job then loses its cwd and code mid-run).
start_node() {  # start_node NAME RAY_START_ARGS...: `ray start` in a new session, whose id is saved
    local name="$1"; shift
    setsid bash -c 'echo $$ > "$0"; exec ray start "$@"' "$state_dir/$name.sid" \
        --node-ip-address="$node_ip" --num-cpus=1 --temp-dir="$state_dir/$name" --disable-usage-stats "$@" \
        >"$state_dir/$name.log" 2>&1 || { cat "$state_dir/$name.log" >&2; return 1; }
}

stop_nodes() {  # TERM the sessions the nodes were started in, then KILL what is left after 3 s
    local sids pids
    sids="$(cat "$state_dir"/*.sid 2>/dev/null | paste -sd, || true)"
    [[ -n "$sids" ]] || return 0
    for signal in TERM KILL; do
        pids="$(ps -s "$sids" -o pid= || true)"
        [[ -n "$pids" ]] || break
        # shellcheck disable=SC2086
        kill -s "$signal" $pids 2>/dev/null || true
        for _ in $(seq 6); do
            [[ -n "$(ps -s "$sids" -o pid= || true)" ]] || break
            sleep 0.5
        done
    done
    rm -f "$state_dir"/*.sid
}

case "$action" in
    start)
        if [[ -f "$state_dir/head.sid" ]] && ps -s "$(cat "$state_dir/head.sid")" -o pid= >/dev/null; then
            echo "a local cluster already runs from $state_dir; stop it first: $0 stop --port $port" >&2
            exit 1
        fi
        mkdir -p "$state_dir/head" "$state_dir/worker"
        ray get-auth-token --generate >/dev/null  # makes ~/.ray/auth_token when no token is given
        if ! start_node head --head --port="$port" --dashboard-host=127.0.0.1 \
                --dashboard-port="$dashboard_port" --ray-client-server-port=$((port + 1)) \
                --dashboard-agent-listen-port=$((port + 2)) \
            || ! start_node worker --address="$node_ip:$port" --dashboard-agent-listen-port=$((port + 3)); then
            stop_nodes
            exit 1
        fi
        echo "Ray cluster: $node_ip:$port (2 nodes, 1 CPU each)"
        echo "dashboard: http://127.0.0.1:$dashboard_port"
        echo "submit a job: RAY_AUTH_MODE=token adaray submit JOB.yaml --address http://127.0.0.1:$dashboard_port"
        ;;
    stop)
        stop_nodes
        rm -rf "$state_dir"
        echo "stopped the local cluster on port $port"
        ;;
    status)
        exec ray status --address="$node_ip:$port"
        ;;
esac
