#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs nginx and a JDK
# when missing, checks formatting and lints, builds the stage binaries and
# runs every test (unit tests and the end-to-end tests against a real nginx
# and a real `java -jar`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the stage binaries as the CodeDeploy agent would.
cargo build --workspace --bins --locked
cargo test --workspace --locked
