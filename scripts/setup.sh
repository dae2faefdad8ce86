#!/usr/bin/env bash
# Installs the system packages the tests need on a fresh Debian 12 machine (idempotent):
# Mesa's lavapipe, a software Vulkan driver, so the wgpu tests run without a GPU; CMake, which
# builds libjpeg-turbo (the benchmarks' JPEG decoder) from the turbojpeg crate's source.
set -euo pipefail
need=()
for p in mesa-vulkan-drivers libvulkan1 libegl1 cmake; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust 1.95+ (rustup.rs)" >&2; exit 1; }
