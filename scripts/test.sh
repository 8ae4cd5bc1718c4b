#!/usr/bin/env bash
# Every test: installs what is missing (nats-server, moto_server, Debian's blender and tmux),
# checks formatting and lints, runs the whole test suite against real servers, then drives the
# operator terminal in tmux.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-tools.sh --blender --tmux
export SUANLI_NATS_SERVER="$root/.tools/bin/nats-server"
export SUANLI_MOTO_SERVER="$root/.tools/bin/moto_server"
echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test: cargo clippy" >&2
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "test: cargo test" >&2
cargo test --locked --workspace
echo "test: chaos run (short form)" >&2
SUANLI_BIN="$root/target/debug/suanli" scripts/chaos.sh --short
echo "test: scripts/tui-e2e.sh" >&2
scripts/tui-e2e.sh
echo "test: leaf-node farm (scripts/cluster.sh, short form)" >&2
SUANLI_BIN="$root/target/debug/suanli" scripts/cluster.sh --frames 1-24
echo "test: secure leaf-node farm (scripts/cluster.sh --secure, short form)" >&2
SUANLI_BIN="$root/target/debug/suanli" scripts/cluster.sh --secure --frames 1-24
