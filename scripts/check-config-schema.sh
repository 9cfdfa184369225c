#!/usr/bin/env bash
# Validates every YAML file under config/ against config/ficus.schema.json with check-jsonschema
# (PyPI), installing it first when it is missing. The schema itself is checked against the config
# types by the unit test `config::schema::tests::committed_schema_is_up_to_date`; regenerate it
# with `cargo run -- schema > config/ficus.schema.json`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -m check_jsonschema --version >/dev/null 2>&1; then
  python3 -m pip install --quiet check-jsonschema ||
    python3 -m pip install --quiet --break-system-packages check-jsonschema
fi
mapfile -t files < <(find config \( -name '*.yaml' -o -name '*.yml' \) -type f | sort)
if ((${#files[@]} == 0)); then
  echo "no YAML files under config/" >&2
  exit 1
fi
python3 -m check_jsonschema --schemafile config/ficus.schema.json "${files[@]}"
