#!/usr/bin/env bash
# A self-signed development certificate for localhost/127.0.0.1, valid 30 days. Never commit it.
set -euo pipefail
cd "$(dirname "$0")"
name=${1:-localhost}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=$name" -addext "subjectAltName=DNS:$name,IP:127.0.0.1" \
  -keyout "$name.key" -out "$name.pem" 2>/dev/null
chmod 600 "$name.key"
echo "wrote certs/$name.pem and certs/$name.key"
