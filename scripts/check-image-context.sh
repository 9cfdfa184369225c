#!/usr/bin/env bash
# Rebuilds the container image's build context without a Docker engine: copies what the
# Dockerfile's builder stage COPYs into an empty folder and builds the binary there, so a file
# the build needs but the Dockerfile does not copy fails here, not on a user's `docker build`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
stage=0
while read -r word rest; do
  case "$word" in
    FROM) stage=$((stage + 1)) ;;
    COPY)
      [ "$stage" -eq 1 ] || continue
      read -ra args <<<"$rest"
      [[ "${args[0]}" == --* ]] && continue
      dest=${args[${#args[@]} - 1]}
      for src in "${args[@]:0:${#args[@]}-1}"; do
        if [[ "$dest" == */ ]]; then target="$ctx/$dest$(basename "$src")"; else target="$ctx/$dest"; fi
        mkdir -p "$(dirname "$target")"
        cp -r "$src" "$target"
      done
      ;;
  esac
done <Dockerfile
echo "== image build context: $(cd "$ctx" && ls -A | tr '\n' ' ')"
# A target folder of its own: the binary built here must not stand in for the repository's.
(cd "$ctx" && CARGO_TARGET_DIR="$repo/target/image-context" cargo build --locked --bin ficus)
echo "== image build context: ok"
