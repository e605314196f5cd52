#!/bin/bash
# ValidateService: wait until the new build answers on its port (60 s at
# most), as the book's health check does.
set -u
for _ in $(seq 600); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/profile)" = 200 ]; then
        exit 0
    fi
    sleep 0.1
done
echo "health.sh: the app never answered on 127.0.0.1:8080" >&2
exit 1
