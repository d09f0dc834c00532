#!/usr/bin/env bash
# Start or stop a throwaway redis-server on 127.0.0.1 (port $TOLLGATE_REDIS_PORT, default 6379),
# for the Redis peer of `tollgate bench` and the Redis tests. Installs redis-server with apt when
# it is missing and apt is usable.
#   .ci/redis-server.sh start | stop
set -euo pipefail
port="${TOLLGATE_REDIS_PORT:-6379}"
dir="${TMPDIR:-/tmp}/tollgate-redis-$port"
case "${1:-start}" in
start)
    if ! command -v redis-server >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            (apt-get install -y redis-server >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y redis-server >/dev/null; })
        else
            echo "redis-server is not installed (apt-get install redis-server)" >&2
            exit 1
        fi
    fi
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
    for _ in $(seq 1 50); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && { echo "redis-server on 127.0.0.1:$port"; exit 0; }
        sleep 0.1
    done
    echo "redis-server did not start; see $dir/redis.log" >&2
    exit 1
    ;;
stop)
    if [ -f "$dir/redis.pid" ]; then
        kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
        rm -f "$dir/redis.pid"
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
