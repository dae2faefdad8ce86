#!/usr/bin/env bash
# Full-size checks on an SD 1.5-shaped model (not part of `./build.sh test`; run by
# `./build.sh test-full [MODEL_DIR]`). MODEL_DIR defaults to ~/.cache/edict/sd15-random, written
# by scripts/make_full_size.py when missing (≈ 7 GB, needs tests/reference/.venv).
#  1. native, per backend (cpu, wgpu) and precision (f32, f16):
#     `edict bench --size SIZE --iters 1 --steps 4 --strength 0.5 [--no-edit]` (load, one batch-2 UNet call,
#     VAE encode and decode, an EDICT edit, peak RSS), and an EDICT round trip
#     `edict reconstruct` at REC_SIZE² (4 steps, strength 0.5) whose latent_rel_err must be 0.
#  2. the page: tests/web/full.mjs loads the fp16 files through the page's URL loader in headless
#     Chromium (WebGPU on SwiftShader, networks in f32), reports load time and wasm memory
#     (limit 2.5 GiB), edits a 64×64 photo and checks the inverted pair against the CLI's.
# Env: BACKENDS ("cpu wgpu"), PRECISIONS ("f32 f16"), SIZE (bench side, 512), BENCH_EDIT (1 on cpu, 0
# on wgpu: on Mesa lavapipe a 512² UNet call takes ~15 min, so there the edit is the round trip's),
# REC_SIZE (256), WEB (1; 0 skips
# the page), RUN_TIMEOUT (seconds per command, 7200), EDICT_BIN (the CLI; default the release build).
# Ends with a summary table; exits 1 if any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-$HOME/.cache/edict/sd15-random}"
TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edict/target}"
EDICT="${EDICT_BIN:-$TARGET_DIR/release/edict}"
BACKENDS="${BACKENDS:-cpu wgpu}"
PRECISIONS="${PRECISIONS:-f32 f16}"
REC_SIZE="${REC_SIZE:-256}"
RUN_TIMEOUT="${RUN_TIMEOUT:-7200}"
OUT="$(mktemp -d "${TMPDIR:-/tmp}/edict-test-full-XXXXXX")"
trap 'rm -rf "$OUT"' EXIT
failed=()
rows=()

say() { echo "== $*" >&2; }
fail() { echo "FAIL $*" >&2; failed+=("$*"); }

if [[ ! -x "$EDICT" ]]; then
  echo "test-full: no CLI at $EDICT (run ./build.sh release, or set EDICT_BIN)" >&2
  exit 1
fi
if [[ ! -f "$MODEL/model_index.json" ]]; then
  if [[ -n "${1:-}" ]]; then
    echo "test-full: $MODEL is not a diffusers folder (no model_index.json)" >&2
    exit 1
  fi
  py=tests/reference/.venv/bin/python
  [[ -x "$py" ]] || { echo "test-full: $MODEL is missing and $py (to write it) too; see scripts/make_full_size.py" >&2; exit 1; }
  say "writing the full-size random model to $MODEL (scripts/make_full_size.py)"
  "$py" scripts/make_full_size.py "$MODEL" || { echo "test-full: scripts/make_full_size.py failed" >&2; exit 1; }
fi

# a smooth REC_SIZE² test photo for the round trips
python3 - "$OUT/photo.png" "$REC_SIZE" <<'EOF'
import struct, sys, zlib
path, n = sys.argv[1], int(sys.argv[2])
rows = b"".join(b"\0" + bytes(v for x in range(n) for v in (
    (230, 150, 60) if (x - n * 0.56) ** 2 + (y - n * 0.44) ** 2 < (n * 0.28) ** 2
    else ((40 + 3 * x * 64 // n) % 256, (60 + 2 * y * 64 // n) % 256, (200 - 2 * x * 64 // n) % 256))) for y in range(n))
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", n, n, 8, 2, 0, 0, 0))
                       + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
EOF

for b in $BACKENDS; do
  size="${SIZE:-512}"
  # on wgpu the edit is left to the round trip below: on lavapipe each 512² UNet call takes ~15 min
  no_edit="$([[ ${BENCH_EDIT:-$([[ $b == cpu ]] && echo 1 || echo 0)} == 0 ]] && echo --no-edit)"
  for p in $PRECISIONS; do
    tag="$b-$p"
    say "$tag: edict bench --size $size"
    if timeout "$RUN_TIMEOUT" "$EDICT" bench --model "$MODEL" --backend "$b" --precision "$p" --size "$size" \
        --iters 1 --steps 4 --strength 0.5 $no_edit --json >"$OUT/bench-$tag.json" 2>"$OUT/bench-$tag.err"; then
      jq -r '"   load \(.load_s*10|round/10) s, UNet \(.unet_batch2_s*100|round/100) s per batch-2 call, VAE encode \(.vae_encode_s*100|round/100) s, decode \(.vae_decode_s*100|round/100) s, edit \(if .edit_s then "\(.edit_s*10|round/10) s" else "skipped" end), peak RSS \(.peak_rss_mib|round) MiB, largest GPU buffer \(.largest_buffer_mib|round) MiB"' "$OUT/bench-$tag.json" >&2
      bench="$(jq -r '[.load_s, .unet_batch2_s, .vae_encode_s, .vae_decode_s, .edit_s, .peak_rss_mib/1024] | map(if . == null then "—" else (. * 100 | round / 100 | tostring) end) | join(" | ")' "$OUT/bench-$tag.json")"
    else
      rc=$?
      tail -5 "$OUT/bench-$tag.err" >&2
      fail "$tag: edict bench --size $size exited with $rc$([[ $rc == 124 ]] && echo " (over RUN_TIMEOUT=${RUN_TIMEOUT}s)")"
      bench="failed | | | | |"
    fi

    say "$tag: edict reconstruct ${REC_SIZE}²"
    t=$SECONDS
    if timeout "$RUN_TIMEOUT" "$EDICT" reconstruct --model "$MODEL" --backend "$b" --precision "$p" --image "$OUT/photo.png" \
        --width "$REC_SIZE" --height "$REC_SIZE" --steps 4 --strength 0.5 --prompt "a photo of a cat" --quiet --force \
        --out "$OUT/rec-$tag.png" --report "$OUT/rec-$tag.json" 2>"$OUT/rec-$tag.err"; then
      err="$(jq -r '.latent_rel_err' "$OUT/rec-$tag.json")"
      [[ "$err" == 0 || "$err" == 0.0 ]] || fail "$tag: EDICT round trip at ${REC_SIZE}²: latent_rel_err $err, not 0"
      rec="$err | $((SECONDS - t))"
    else
      rc=$?
      tail -5 "$OUT/rec-$tag.err" >&2
      fail "$tag: edict reconstruct at ${REC_SIZE}² exited with $rc"
      rec="failed | $((SECONDS - t))"
    fi
    rows+=("| $b | $p | ${size}² | $bench | $rec |")
  done
done

web=""
if [[ "${WEB:-1}" != 0 ]]; then
  say "the page: tests/web/full.mjs"
  if [[ ! -d tests/web/node_modules/playwright-core ]]; then
    fail "page: tests/web/node_modules is missing (./build.sh test-web installs it)"
  else
    EDICT_BIN="$EDICT" EDICT_FULL_JSON="$OUT/web.json" node tests/web/full.mjs "$MODEL" || fail "page: tests/web/full.mjs (see above)"
    [[ -f "$OUT/web.json" ]] && web="$(jq -r '"load \(.web_load_s // "—") s, wasm memory \(.web_wasm_after_load_gib // "—") GiB after load, \(.web_wasm_peak_gib // "—") GiB peak, edit \(.web_edit_s // "—") s (CLI cpu edit \(.cli_edit_s // "—") s)"' "$OUT/web.json")"
  fi
fi

echo
echo "full-size checks on $MODEL (bench: --iters 1 --steps 4 --strength 0.5; round trip at ${REC_SIZE}²)"
echo "| backend | precision | bench size | load s | UNet s (batch 2) | VAE encode s | VAE decode s | edit s | peak RSS GiB | round trip latent_rel_err | round trip wall s |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
[[ -n "$web" ]] && echo "page (SwiftShader, fp16 files, 64×64 edit): $web"
if (( ${#failed[@]} )); then
  echo "${#failed[@]} failed:"
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
echo "all full-size checks passed"
