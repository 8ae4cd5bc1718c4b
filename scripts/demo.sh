#!/usr/bin/env bash
# The main job: installs what is missing, builds Suanli in release, and runs `suanli demo`:
# a local farm (its own nats-server, a coordinator, workers in two regions) renders the
# built-in short film, shows progress, fetches the frames and writes a contact sheet.
# Extra arguments go to `suanli demo` (e.g. --fresh, --frames 1-96, --dir DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-tools.sh
echo "demo: building suanli (release)…" >&2
cargo build --release --locked --bin suanli
export SUANLI_NATS_SERVER="$root/.tools/bin/nats-server"
exec "$root/target/release/suanli" demo "$@"
