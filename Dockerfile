# syntax=docker/dockerfile:1
#
# ficus container image.
#
#   docker build -t ficus .
#   docker run --rm -p 8081:8081 -v "$PWD/my-ficus:/etc/ficus:ro" ficus
#
# The image ships config/ficus.example.yaml as /etc/ficus/ficus.yaml. That file binds
# 127.0.0.1, which inside a container is reachable only from the container itself, and its
# upstreams are placeholders. Mount your own config to use the image. Mount the DIRECTORY, as
# above, not the single file: hot reload watches /etc/ficus for changes, and editors replace a
# file by renaming a new one over it, which a single-file bind mount never shows. Your config:
#
#   listeners:
#     - name: public
#       bind: 0.0.0.0:8081         # all interfaces, so a published port reaches it
#   upstreams: ...                 # real backends, not 127.0.0.1 (that is this container)
#
# Admin listener. The admin API binds 127.0.0.1 by default, and so does the example config
# (127.0.0.1:9902). Inside a container that means only the container itself can reach it, so
# EXPOSE 9902 below does nothing until you change it. To scrape /metrics from outside (a
# Prometheus or Kubernetes probe), set `admin.bind: 0.0.0.0:9902` in your own config,
# deliberately. Then:
#   - Set the token: pass FICUS_ADMIN_TOKEN (or the variable named by `admin.token_env`) from a
#     secret. Without it, POST /admin/reload is disabled. With it, that call needs
#     `Authorization: Bearer <token>`.
#   - The token guards only POST /admin/reload. GET /metrics, /healthz, /readyz and
#     /admin/config stay open to anyone who can reach the port. Do not publish 9902 to
#     untrusted networks: restrict it with the network or firewall instead (for example, do
#     not `-p` it, or use a NetworkPolicy).
#
# Shutdown. On SIGTERM ficus drains in-flight requests for up to `shutdown.drain_timeout`
# (default 30s), but `docker stop` sends SIGKILL after 10s. Use `docker stop -t 35` or
# `--stop-timeout 35` (or a Kubernetes terminationGracePeriodSeconds above the drain timeout),
# or lower drain_timeout.
#
# The cache mounts below need BuildKit (the default builder since Docker 23).

# ---------------------------------------------------------------------------------- builder
FROM rust:1-bookworm AS builder
WORKDIR /build

# Only what `cargo build --bin ficus` reads:
# - the manifest and lock file;
# - src/;
# - config/, because src/demo.rs embeds config/demo.yaml with include_str! (and the runtime
#   stage copies the example config from the build context);
# - benches/, because Cargo.toml names the `translate` bench explicitly and Cargo refuses a
#   manifest whose target paths are missing, even to build another target;
# - vendor/, hyper with ficus's patch (vendor/hyper/FICUS-PATCH.md), which Cargo.toml's
#   [patch.crates-io] points at.
# `scripts/check-image-context.sh` (run by CI) copies exactly these COPY lines into an empty
# folder and builds there, so a missing one fails CI rather than `docker build`.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
COPY vendor ./vendor

# The registry and target dirs are cache mounts, so rebuilds reuse downloaded crates and
# compiled dependencies. A cache mount is not part of the image, so the binary is copied out
# in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin ficus \
    && install -m 0755 target/release/ficus /usr/local/bin/ficus

# ---------------------------------------------------------------------------------- runtime
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user with a fixed uid/gid, so volume permissions and Kubernetes
# runAsUser/runAsNonRoot can refer to it.
RUN groupadd --gid 10001 ficus \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ficus

COPY --from=builder /usr/local/bin/ficus /usr/local/bin/ficus

# The config and any certificates it names (relative paths resolve against /etc/ficus).
# These are owned by root and only readable by ficus, which never writes them.
COPY config/ficus.example.yaml /etc/ficus/ficus.yaml

USER ficus

# 8081: the example's public listener. 9902: the example's admin listener. See above: both
# bind 127.0.0.1 in the example, so override their binds in your own config.
EXPOSE 8081 9902

ENTRYPOINT ["ficus"]
CMD ["run", "--config", "/etc/ficus/ficus.yaml"]
