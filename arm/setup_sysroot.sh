#!/usr/bin/env bash
# setup_sysroot.sh DEST
#
# Build an arm64 Debian bookworm sysroot in DEST that qemu-aarch64 can use via
# `qemu-aarch64 -L DEST ...` (no binfmt, no chroot, no second debootstrap stage).
#
#  1. installs host packages: qemu-user (dynamic build: plugins need dlopen, so
#     NOT qemu-user-static), debootstrap, binutils/xz/dpkg-dev.
#  2. debootstrap --foreign --arch=arm64 --variant=minbase into DEST, using the
#     Debian mirror that the host's apt already uses.
#  3. unpacks every downloaded .deb into DEST with dpkg-deb -x (replaces the
#     second stage, which would need binfmt).
#  4. applies the qemu-user workarounds (see README.md):
#       - empty DEST/sys/devices/system/cpu/{possible,present}
#         (pytorch-cpuinfo inside onnxruntime otherwise parses the HOST's x86
#          /proc/cpuinfo and segfaults)
#       - empty DEST/etc/ld.so.cache (otherwise the guest ld.so would read the
#         host's x86 /etc/ld.so.cache through qemu's -L fallback)
#  5. verifies `qemu-aarch64 -L DEST DEST/usr/bin/python3.11 -c ...`.
#
# Idempotent: a finished DEST (stamp file DEST/.armlab-sysroot-ok) is only
# re-verified. Set FORCE=1 to wipe and rebuild.
set -euo pipefail

DEST=${1:?usage: setup_sysroot.sh DEST}
SUITE=${SUITE:-bookworm}
INCLUDE=${INCLUDE:-python3,python3-venv,libstdc++6,libgcc-s1,libgomp1,libffi8}
NICE=${NICE:-nice -n 10}
STAMP="$DEST/.armlab-sysroot-ok"

log() { printf '[setup_sysroot %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---------------------------------------------------------------- host packages
need_pkgs=()
for p in qemu-user debootstrap binutils xz-utils dpkg-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
    log "installing host packages: ${need_pkgs[*]}"
    # one apt-get update per machine is enough; do it if the lists look empty
    if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then apt-get update; fi
    DEBIAN_FRONTEND=noninteractive $NICE apt-get install -y --no-install-recommends "${need_pkgs[@]}"
fi
qemu-aarch64 --version | head -1 >&2

# ---------------------------------------------------------------- mirror
# Read the mirror apt already uses (deb822 *.sources or one-line *.list);
# skip the security archive. Override with MIRROR=...
find_mirror() {
    local f u
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        # deb822: first "URIs:" of a stanza whose Suites contain $SUITE (not -security)
        u=$(awk -v s="$SUITE" '
            BEGIN{RS=""; FS="\n"}
            {
              uri=""; ok=0; deb=0
              for(i=1;i<=NF;i++){
                if($i ~ /^URIs:/){ split($i,a,/[ \t]+/); uri=a[2] }
                if($i ~ /^Suites:/ && $i ~ ("[ \t]" s "([ \t]|$)")) ok=1
                if($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) deb=1
              }
              if(ok && deb && uri!="" && uri !~ /security/){ print uri; exit }
            }' "$f")
        [[ -n $u ]] && { echo "$u"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        u=$(awk -v s="$SUITE" '$1=="deb" && $0 !~ /security/ {
                 for(i=2;i<=NF;i++){ if($i ~ /^\[/){ while($i !~ /\]$/) i++; continue }
                                     if($i ~ /^(https?|file):/){ if($(i+1)==s){print $i; exit} } } }' "$f")
        [[ -n $u ]] && { echo "$u"; return; }
    done
    echo "http://deb.debian.org/debian"
}
MIRROR=${MIRROR:-$(find_mirror)}
log "mirror: $MIRROR  suite: $SUITE  include: $INCLUDE"

# ---------------------------------------------------------------- verify helper
verify() {
    log "verifying python under qemu"
    qemu-aarch64 -L "$DEST" "$DEST/usr/bin/python3.11" -c \
        'import sys, platform, ctypes, sqlite3, venv; print(sys.version.split()[0], platform.machine(), sys.prefix)'
}

if [[ -f $STAMP && ${FORCE:-0} != 1 ]]; then
    log "sysroot already built ($STAMP); re-verifying only"
    verify
    exit 0
fi

# ---------------------------------------------------------------- stage 1
if [[ ${FORCE:-0} == 1 && -d $DEST ]]; then
    log "FORCE=1: removing $DEST"; rm -rf --one-file-system "$DEST"
fi
mkdir -p "$DEST"
if ! ls "$DEST"/var/cache/apt/archives/python3.11-minimal_*.deb >/dev/null 2>&1; then
    log "debootstrap --foreign (first stage)"
    $NICE debootstrap --foreign --arch=arm64 --variant=minbase \
        --include="$INCLUDE" "$SUITE" "$DEST" "$MIRROR"
else
    log "first stage already done, reusing downloaded .debs"
fi

# ---------------------------------------------------------------- unpack all debs
# Replaces `debootstrap --second-stage` (which needs to execute arm64 binaries).
# The merged-/usr symlinks (/bin -> usr/bin, /lib -> usr/lib) that the first stage
# created must survive; we check that afterwards.
n=0
for d in "$DEST"/var/cache/apt/archives/*.deb; do
    # NOT plain `dpkg-deb -x`: its tar replaces the /bin,/lib,/sbin -> usr/* symlinks
    # with real directories, which breaks the merged-/usr layout.
    dpkg-deb --fsys-tarfile "$d" | tar -x --keep-directory-symlink --no-same-owner -C "$DEST"
    n=$((n+1))
done
log "unpacked $n .debs"
for l in bin sbin lib; do
    if [[ ! -L $DEST/$l ]]; then echo "ERROR: $DEST/$l is no longer a symlink (merged /usr broken)" >&2; exit 1; fi
done

# ---------------------------------------------------------------- qemu-user workarounds
# (a) pytorch-cpuinfo (inside onnxruntime) reads /sys/devices/system/cpu/{possible,present}
#     and then parses /proc/cpuinfo. qemu 7.2 does not emulate /proc/cpuinfo for
#     aarch64, so the guest sees the host's x86 file -> inconsistent data -> SIGSEGV.
#     Empty files make cpuinfo_initialize() fail cleanly; onnxruntime then falls back
#     to getauxval(AT_HWCAP), which qemu fills in from -cpu.
mkdir -p "$DEST/sys/devices/system/cpu"
: > "$DEST/sys/devices/system/cpu/possible"
: > "$DEST/sys/devices/system/cpu/present"
# (b) without DEST/etc/ld.so.cache the guest ld.so would open the host's x86 cache
#     (qemu -L falls back to the host path when DEST/path does not exist). An empty
#     file is ignored by ld.so, which then searches the default multiarch dirs.
#     (Running the guest ldconfig is NOT safe: it would write through to host /etc.)
: > "$DEST/etc/ld.so.cache"
# (c) keep /etc/ld.so.preload from leaking in from the host.
: > "$DEST/etc/ld.so.preload"
# (d) python3 symlink is shipped by python3-minimal; make sure it is there.
[[ -e $DEST/usr/bin/python3 ]] || ln -sf python3.11 "$DEST/usr/bin/python3"

verify
date -u +%FT%TZ > "$STAMP"
log "done: $(du -sh --apparent-size "$DEST" | cut -f1) in $DEST"
