#!/usr/bin/env bash
# A development CA for client certificates and one client certificate signed by it, with a
# SPIFFE-style URI SAN, valid 30 days. Never commit them.
# Usage: certs/generate-mtls.sh [client-name=orders] [san=spiffe://dev/orders]
set -euo pipefail
cd "$(dirname "$0")"
name=${1:-orders}
san=${2:-spiffe://dev/$name}
if [ ! -f clients-ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=ficus dev client CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout clients-ca.key -out clients-ca.pem 2>/dev/null
  chmod 600 clients-ca.key
fi
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj "/CN=$name/O=dev" -keyout "$name-client.key" -out "$name-client.csr" 2>/dev/null
ext=$(mktemp); trap 'rm -f "$ext" "$name-client.csr"' EXIT
printf 'subjectAltName=URI:%s\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' "$san" >"$ext"
openssl x509 -req -in "$name-client.csr" -CA clients-ca.pem -CAkey clients-ca.key -CAcreateserial \
  -days 30 -extfile "$ext" -out "$name-client.pem" 2>/dev/null
rm -f clients-ca.srl
chmod 600 "$name-client.key"
echo "wrote certs/clients-ca.pem (the listener's client_auth.ca_file) and certs/$name-client.pem/.key ($san)"
