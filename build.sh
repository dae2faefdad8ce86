#!/usr/bin/env bash
# One entry point for building and testing.
#   ./build.sh test       set up system packages, then run every test (what CI runs)
#   ./build.sh release    build the `edict` CLI ($CARGO_TARGET_DIR/release/edict)
#   ./build.sh web        build the browser module into www/pkg/ (installs the wasm toolchain)
#   ./build.sh serve      serve www/ on http://127.0.0.1:${PORT:-8000}/
#   ./build.sh test-web   browser test: headless Chromium edits through the page, checked against the CLI
#   ./build.sh test-full [--sdxl] [MODEL_DIR]  full-size SD 1.5 (or SDXL) checks (slow; not part of test): scripts/test-full.sh
#   ./build.sh test-tuned the exactness and network tests built with gpu-tuned (autotune, fusion; slow; not part of test)
set -euo pipefail
cd "$(dirname "$0")"
# Build outputs live outside the checkout, so fresh clones on this machine (CI) reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edict/target}"
# lavapipe/EGL want a runtime dir; without one they only print noise
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/edict-xdg-$(id -u)}"
mkdir -p -m 700 "$XDG_RUNTIME_DIR"

# The wasm build has its own target dir, so it never waits on the native build's lock.
WASM_TARGET_DIR="$HOME/.cache/edict/target-wasm"

# The browser module; `web --browser` also installs Chromium for the browser tests.
web() {
  scripts/setup-web.sh "$@"
  ( # in a subshell: the fallback toolchain's RUSTC etc. must not reach native cargo runs
    source "$HOME/.cache/edict/wasm-env.sh"
    CARGO_TARGET_DIR="$WASM_TARGET_DIR" "${WASM_CARGO[@]}" --release --locked -p edict-web
    wasm="$WASM_TARGET_DIR/wasm32-unknown-unknown/release/edict_web.wasm"
    out=www/pkg/edict_web_bg.wasm
    # the finished package is kept in the cache too, so a fresh clone of an unchanged module
    # skips wasm-opt (minutes, on one core); made in a temporary folder and renamed, so an
    # interrupted build never leaves a half-made package behind
    stage="$WASM_TARGET_DIR/pkg"
    if [[ ! -f "$stage/edict_web_bg.wasm" || "$wasm" -nt "$stage/edict_web_bg.wasm" ]]; then
      rm -rf "$stage" "$stage.tmp"
      "$WASM_BINDGEN" --target web --no-typescript --out-dir "$stage.tmp" "$wasm"
      # npm's binaryen; Debian's wasm-opt 108 breaks burn's module
      node --stack-size=8000 "$WASM_OPT" -O2 --strip-debug --enable-reference-types --enable-bulk-memory \
        --enable-nontrapping-float-to-int --enable-sign-ext --enable-multivalue --enable-mutable-globals \
        "$stage.tmp/edict_web_bg.wasm" -o "$stage.tmp/edict_web_bg.wasm"
      mv "$stage.tmp" "$stage"
    fi
    if [[ ! -f "$out" || "$stage/edict_web_bg.wasm" -nt "$out" ]]; then
      rm -rf www/pkg
      cp -r "$stage" www/pkg
    fi
    echo "web: $(du -b "$wasm" | cut -f1) bytes from rustc, $(du -b "$out" | cut -f1) in www/pkg after wasm-bindgen + wasm-opt" >&2
  )
}

# The browser test against the native CLI it compares with: the binary the test build makes (a
# plain `cargo build` unifies features without the dev-dependencies and rebuilds much of burn).
browser_test() {
  EDICT_BIN="$CARGO_TARGET_DIR/debug/edict" node tests/web/run.mjs
}

test_web() {
  cargo test --workspace --no-run --locked --quiet
  web --browser
  browser_test
}

# Everything: the native tests and the browser test side by side. Neither fills both cores alone
# (the page runs on one renderer thread, wasm-opt on one), so together they take about the longer
# one's time; the wasm module builds while the native tests build. The browser test's output is
# printed after the native tests'.
verdict() { if [[ $1 == 0 ]]; then echo passed; else echo "FAILED ($1)"; fi; }

test_all() {
  local log ready status=0 web_status=0
  log=$(mktemp)
  ready=$(mktemp)
  # the browser test starts once both its module and the CLI it compares with are built
  ( web --browser && until [[ -s $ready ]]; do sleep 2; done && [[ $(<"$ready") == built ]] && browser_test ) >"$log" 2>&1 &
  local pid=$!
  if cargo test --workspace --no-run --locked; then echo built >"$ready"; else echo failed >"$ready"; status=1; fi
  [[ $status != 0 ]] || cargo test --workspace --locked 2>&1 || status=$?
  wait "$pid" || web_status=$?
  cat "$log"
  rm -f "$log" "$ready"
  # the Pages workflow (its npm piece came with the browser test's)
  local lint_status=0
  node tests/web/lint-workflows.mjs || lint_status=$?
  echo "native tests: $(verdict $status); browser test: $(verdict $web_status); workflow lint: $(verdict $lint_status)" >&2
  [[ $status == 0 && $web_status == 0 && $lint_status == 0 ]]
}

case "${1:-}" in
  setup)
    scripts/setup.sh ;;
  test)
    scripts/setup.sh
    test_all ;;
  release)
    cargo build --release --locked ;;
  web)
    web ;;
  serve)
    [[ -f www/pkg/edict_web.js ]] || { echo "www/pkg/ is missing: run ./build.sh web first" >&2; exit 1; }
    echo "serving www/ on http://127.0.0.1:${PORT:-8000}/" >&2
    exec python3 -m http.server "${PORT:-8000}" --bind 127.0.0.1 --directory www ;;
  test-web)
    test_web ;;
  test-tuned)
    # release: autotune times its candidates, and unoptimised Burn makes that crawl. A kernel
    # cache of its own, so that the first process tunes and the child processes read it back.
    export EDICT_KERNEL_CACHE="${EDICT_KERNEL_CACHE:-$CARGO_TARGET_DIR/tuned-kernels}"
    cargo test --release --locked --features gpu-tuned --test it -- exactness:: networks:: --test-threads 1 ;;
  test-full)
    shift
    cargo build --release --locked
    web --browser # www/pkg current, Chromium and tests/web's npm pieces
    scripts/test-full.sh "$@" ;;
  *)
    sed -n '2,9p' "$0"; exit 2 ;;
esac
