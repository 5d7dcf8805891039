#!/usr/bin/env bash
# Builds the binaries on the host and stages the build context of the
# registry-free image (deploy/Dockerfile.prebuilt) in target/correo-image/.
#
#   deploy/prebuilt.sh            # release build of correo and correo-dns
#   deploy/prebuilt.sh --debug    # the debug build (what the tests use)
#   CORREO_BIN_DIR=dir deploy/prebuilt.sh --no-build   # binaries already in dir
#   CORREO_IMAGE_CONTEXT=dir ...  # stage elsewhere (compose.prebuilt.yml reads it too)
#
# Then: docker-compose -f docker-compose.yml -f deploy/compose.prebuilt.yml up -d
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release build=1
for arg in "$@"; do
  case $arg in
    --debug) profile=debug ;;
    --no-build) build=0 ;;
    *) echo "usage: $0 [--debug] [--no-build]" >&2; exit 2 ;;
  esac
done
target_dir=${CARGO_TARGET_DIR:-target}
bin_dir=${CORREO_BIN_DIR:-$target_dir/$profile}
if [ $build = 1 ]; then
  flags=()
  [ $profile = release ] && flags+=(--release)
  cargo build "${flags[@]}" -p correo -p correo-dns
fi
ctx=${CORREO_IMAGE_CONTEXT:-target/correo-image}
mkdir -p "$ctx"
deploy/rootfs.sh "$ctx/rootfs" "$bin_dir/correo" "$bin_dir/correo-dns"
cp deploy/Dockerfile.prebuilt "$ctx/Dockerfile"
echo "image context staged in $ctx"
