#!/usr/bin/env bash
# The benchmark: installs nginx and a JDK when missing, builds nonstop in
# release mode, then runs N deployments (default 10) of the demo app through
# the five binaries under constant load through a private nginx, with a 2 s
# request in flight at every switch. Prints the tables and writes
# target/bench/{bench.json,bench.md,timeline.svg}. Exits 1 if a request was
# dropped. Options: --deploys N, --startup-ms MS, --slow-ms MS, --out DIR, -v,
# --retire, --warmup-requests N; --modes N (every mode side by side, needs
# the Docker engine for the compose rows); --soak N (N deployments of a fast
# app in a row, watching fds, processes, the state dir and the app's logs).
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-deps.sh
cargo build --release --workspace --bins --locked
exec target/release/bench "$@"
