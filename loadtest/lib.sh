# Sourced by the load scripts in this folder (matrix, instructions, tls, h2): the set-up they
# share. Loopback only.

# lt_init NAME: $W, a fresh work directory. Every pid added to `pids` is killed at exit, and
# the directory removed.
lt_init() {
  W=$(mktemp -d "/tmp/ficus-$1.XXXXXX")
  pids=()
  trap lt_cleanup EXIT
}

lt_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}

# lt_cert: $W/cert.pem and $W/key.pem, a throwaway P-256 certificate for bench.test.
lt_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
    -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
}

# lt_upstream CPU PORT...: the bench upstream, nginx answering "hello from upstream\n" on each
# port, pinned to CPU (an empty CPU leaves it unpinned).
lt_upstream() {
  local cpu=$1 listen="" p
  shift
  for p in "$@"; do listen="$listen listen 127.0.0.1:$p;"; done
  cat >"$W/up.conf" <<C
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000;
  server {$listen location / { return 200 "hello from upstream\n"; } } }
C
  if [ -n "$cpu" ]; then
    taskset -c "$cpu" nginx -c "$W/up.conf" &
  else
    nginx -c "$W/up.conf" &
  fi
  pids+=($!)
}
