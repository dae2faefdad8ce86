#!/usr/bin/env bash
# One entry point for building and testing.
#   ./build.sh test       set up system packages, then run every test (what CI runs)
#   ./build.sh release    build the `edict` CLI (target/release/edict)
set -euo pipefail
cd "$(dirname "$0")"
# Build outputs live outside the checkout, so fresh clones on this machine (CI) reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edict/target}"
# lavapipe/EGL want a runtime dir; without one they only print noise
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/edict-xdg-$(id -u)}"
mkdir -p -m 700 "$XDG_RUNTIME_DIR"

case "${1:-}" in
  setup)
    scripts/setup.sh ;;
  test)
    scripts/setup.sh
    cargo test --workspace --locked 2>&1 ;;
  release)
    cargo build --release --locked ;;
  *)
    sed -n '2,5p' "$0"; exit 2 ;;
esac
