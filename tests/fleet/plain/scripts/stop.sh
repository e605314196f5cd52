#!/bin/bash
# ApplicationStop (run from the previous revision): stop the app that runs,
# and wait until it has exited (SIGKILL after 30 s).
set -u
pidfile=/home/ec2-user/app/plain/app.pid
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
    fi
fi
rm -f "$pidfile"
