#!/usr/bin/env bash
# Validates the Kubernetes base in deploy/k8s (see scripts/check-k8s.py): schemas for a fixed
# Kubernetes version, strict (unknown fields fail), and the base's operational promises.
# Needs python3; installs kubernetes-validate and PyYAML from PyPI when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1 && command -v apt-get >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q python3-pip
  fi
  # A Debian python3 refuses pip installs into itself (PEP 668) unless told otherwise.
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate PyYAML \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages kubernetes-validate PyYAML
fi
exec python3 scripts/check-k8s.py deploy/k8s --k8s-version 1.30 "$@"
