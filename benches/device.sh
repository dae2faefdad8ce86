#!/usr/bin/env bash
# The GPU benchmark, for a machine that has a GPU but no internet and no Rust: edict release
# binaries built elsewhere are copied there and run on the SD 1.5 architecture with seeded random
# weights (no download; the architecture sets the cost, not the values), in f32 and f16, with
# diffusers + torch timed on the same GPU in the same run when they are installed there.
#
#   benches/device.sh [--size 512] [--iters 3] [--budget 480] [--per-run 150] [--out DIR] NAME=BINARY[:noedit] ...
#
# Each NAME=BINARY is one build of edict, e.g. the default build and one with
# `--features gpu-tuned,vulkan`; `:noedit` skips the timed 50-step EDICT edit for that build (a
# slow build's edit would eat the budget). The peer runs first (f16, f32), then the builds in the
# order given, f16 before f32, each for at most --per-run seconds and within what is left of
# --budget, so the first builds are the ones sure to be measured.
# Every `edict bench --json` result and the peer's output land in --out (default: $OUT, else
# ./device-bench), and one table is printed at the end. Warm-up is excluded from every timing:
# `edict bench` and the peer run each measurement once untimed (kernel compilation, autotuning)
# before the timed repetitions.
#
# Driver stack: the probe prints nvidia-smi, the Vulkan loader and ICD files, and vulkaninfo if
# present. A machine without a Vulkan loader needs libvulkan1 unpacked first (see docs/performance.md,
# "GPU benchmark on a machine without internet").
set -uo pipefail

size=512 iters=3 budget=480 per_run=150 out=${OUT:-device-bench}
builds=()
while [ $# -gt 0 ]; do
    case $1 in
        --size) size=$2; shift 2 ;;
        --iters) iters=$2; shift 2 ;;
        --budget) budget=$2; shift 2 ;;
        --per-run) per_run=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *=*) builds+=("$1"); shift ;;
        *) echo "device.sh: unknown argument $1 (expected --size, --iters, --budget, --per-run, --out or NAME=BINARY)" >&2; exit 2 ;;
    esac
done
[ ${#builds[@]} -gt 0 ] || { echo "device.sh: name at least one build as NAME=BINARY" >&2; exit 2; }
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }

echo "## driver stack"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 || echo "nvidia-smi: not available"
ldconfig -p | grep -m2 'libvulkan.so' || echo "libvulkan: not in the linker cache (no Vulkan loader: wgpu finds no Vulkan adapter)"
for d in /etc/vulkan/icd.d /usr/share/vulkan/icd.d /usr/local/share/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d; do
    ls "$d"/*.json 2>/dev/null
done
[ -n "${VK_DRIVER_FILES:-}" ] && echo "VK_DRIVER_FILES=$VK_DRIVER_FILES"
if command -v vulkaninfo >/dev/null; then timeout 30 vulkaninfo --summary 2>&1 | grep -E 'apiVersion|driverName|deviceName|driverInfo' | head -8; fi

if python3 -c 'import torch, diffusers, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    for precision in f16 f32; do
        echo "## peer $precision: diffusers on cuda"
        timeout "$per_run" python3 "$here/peer_diffusers.py" --config sd15 --device cuda --precision $precision \
            --size "$size" --iters "$iters" --peer-only >"$out/peer-$precision.txt" 2>&1 || tail -5 "$out/peer-$precision.txt"
    done
else
    echo "## peer: skipped (python3 with torch, diffusers and CUDA not found)"
fi

for spec in "${builds[@]}"; do
    name=${spec%%=*} bin=${spec#*=} edit=(--steps 50 --strength 0.8)
    case $bin in *:noedit) bin=${bin%:noedit} edit=(--no-edit) ;; esac
    for precision in f16 f32; do
        t=$(left); [ "$t" -gt "$per_run" ] && t=$per_run
        if [ "$t" -lt 30 ]; then echo "## $name $precision: skipped, the budget is spent"; continue; fi
        echo "## $name $precision ($t s left)"
        s0=$SECONDS
        timeout "$t" "$bin" bench --config sd15 --backend wgpu --precision $precision --size "$size" \
            --iters "$iters" "${edit[@]}" --json >"$out/$name-$precision.json" 2>"$out/$name-$precision.err"
        rc=$?
        echo "exit $rc after $((SECONDS - s0)) s"
        [ $rc -eq 0 ] || { tail -5 "$out/$name-$precision.err"; rm -f "$out/$name-$precision.json"; }
    done
done

python3 - "$out" "$size" <<'EOF'
import glob, json, os, sys
out, size = sys.argv[1], sys.argv[2]
peer = {}
for f in glob.glob(os.path.join(out, "peer-*.txt")):
    lines = open(f).read().strip().splitlines()
    if lines and lines[-1].startswith("{"):
        peer[os.path.basename(f)[5:-4]] = json.loads(lines[-1])["peer"]
print(f"\n## SD 1.5 architecture at {size}×{size}, batch-2 UNet call, seconds (median after warm-up)")
print("| build | precision | compiler | UNet | vs torch | VAE encode | VAE decode | EDICT edit (50 steps, 0.8) | load |")
print("|---|---|---|---|---|---|---|---|---|")
for f in sorted(glob.glob(os.path.join(out, "*-f*.json"))):
    r = json.load(open(f))
    name = os.path.basename(f).rsplit("-", 1)[0]
    p = peer.get(r["precision"])
    ratio = f"{r['unet_batch2_s'] / p['unet_batch2_s']:.2f}×" if p else "—"
    edit = f"{r['edit_s']:.2f}" if r.get("edit_s") is not None else "—"
    a = r.get("adapter") or {}
    print(f"| {name} | {r['precision']} | {a.get('compiler', '?')} | {r['unet_batch2_s']:.4f} | {ratio} | "
          f"{r['vae_encode_s']:.4f} | {r['vae_decode_s']:.4f} | {edit} | {r['load_s']:.1f} |")
for prec, p in sorted(peer.items()):
    print(f"| diffusers {p['diffusers']} + torch {p['torch']} | {prec} | cuda ({p['device']}) | {p['unet_batch2_s']:.4f} | 1.00× | {p['vae_encode_s']:.4f} | {p['vae_decode_s']:.4f} | — | — |")
for f in sorted(glob.glob(os.path.join(out, "*-f*.json")))[:1]:
    a = json.load(open(f)).get("adapter")
    if a:
        print(f"\nadapter: {a['adapter']} ({a.get('kind', '?')}, {a['api']}, {a['driver']}); shader-f16 {a['shader_f16']}, subgroups {a['subgroups']}, "
              f"cooperative-matrix configs {a['cooperative_matrix_configs']}, largest binding {a['max_binding'] / 2**20:.0f} MiB")
EOF
