#!/usr/bin/env bash
# Proves the committed OpenAPI document usable by an off-the-shelf generator: generates a Python
# client from schemas/openapi/control-api.yaml with openapi-python-client (PyPI), starts a fresh
# `peage up --demo`, and runs tests/openapi-client/test_generated_client.py through the
# generated client, which parses every answer with the document's models. Run by
# deploy/dev/test-all.sh (and so by CI).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
TOOLS=${PEAGE_TOOLS_DIR:-$HOME/.cache/peage}
VENV="$TOOLS/openapi-client-venv"
[ -x "$VENV/bin/openapi-python-client" ] || deploy/dev/services.sh install

out="${CARGO_TARGET_DIR:-target}/openapi-client"
rm -rf "$out"
mkdir -p "$out"
echo "openapi-client: generating peage_client from schemas/openapi/control-api.yaml"
# The generator warns that ruff (its optional formatter) is absent; the code is the same.
"$VENV/bin/openapi-python-client" generate --path schemas/openapi/control-api.yaml \
    --output-path "$out/peage_client" --meta none >"$out/generate.log" 2>&1 ||
    { cat "$out/generate.log"; exit 1; }
# Anything but the missing formatter means part of the document could not be turned into code.
if grep -v -e 'ruff' -e 'Skipping Integration' -e '^Generating' -e '^$' \
    -e 'Warning(s) encountered' -e 'If you believe this was a mistake' "$out/generate.log" | grep -q .; then
    echo "openapi-client: the generator could not use all of the document:"
    cat "$out/generate.log"
    exit 1
fi

# shellcheck source=deploy/dev/demo-server.sh
. deploy/dev/demo-server.sh
start_demo "$out/peage.log"
PYTHONPATH="$out" "$VENV/bin/python" tests/openapi-client/test_generated_client.py "$data/demo.json" ||
    { echo "--- last lines of the server's log:"; tail -n 30 "$out/peage.log"; exit 1; }
