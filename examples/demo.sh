#!/usr/bin/env bash
# The demo of the main job, from a fresh Debian machine: installs nginx and a
# JDK when missing, builds nonstop in release mode, starts a private nginx and
# the demo app, performs three deployments under live traffic, prints a table
# of what each stage took and how many requests were served and failed, and
# cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-deps.sh
cargo build --release --workspace --bins --locked
exec target/release/demo "$@"
