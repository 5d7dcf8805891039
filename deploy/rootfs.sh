#!/usr/bin/env bash
# Stages the root filesystem of the Correo image into OUT/base: the binaries in
# /usr/bin, the shared libraries they load (as `ldd` lists them: glibc,
# libm, libgcc_s, the loader; glibc >= 2.34 has the files and dns NSS
# modules inside libc, so getaddrinfo works without more), the CA roots,
# /etc/passwd and /etc/group with the non-root user `correo` (10001), and
# /tmp; and into OUT/owned the empty mount points /certs and /data, which
# the Dockerfiles copy with owner 10001 (a new volume takes the owner of its
# mount point). The result goes into an image `FROM scratch`
# (deploy/Dockerfile, deploy/Dockerfile.prebuilt).
#
#   deploy/rootfs.sh OUT BINARY...
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUT BINARY..." >&2; exit 2; }
rm -rf "$1"
mkdir -p "$1/owned/certs" "$1/owned/data"
out=$1/base; shift
mkdir -p "$out/usr/bin" "$out/etc/ssl/certs" "$out/tmp"
chmod 1777 "$out/tmp"
for bin in "$@"; do
  dest="$out/usr/bin/$(basename "$bin")"
  if command -v strip >/dev/null; then
    strip -o "$dest" "$bin"
  else
    cp "$bin" "$dest"
  fi
  chmod 0755 "$dest"
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)"
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
  done
done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/"
fi
cat > "$out/etc/passwd" <<'PASSWD'
root:x:0:0:root:/nonexistent:/sbin/nologin
correo:x:10001:10001:Correo:/data:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
cat > "$out/etc/group" <<'GROUP'
root:x:0:
correo:x:10001:
nogroup:x:65534:
GROUP
printf 'hosts: files dns\n' > "$out/etc/nsswitch.conf"
