#!/usr/bin/env bash
# build_plugin.sh [DEST]
#
# 1. fetches qemu-plugin.h matching the installed qemu-user (get_qemu_plugin_header.sh,
#    Debian source package, private apt config; host apt config untouched)
# 2. compiles insn_plugin.c -> libinsn.so (host x86_64 shared object loaded by
#    qemu-aarch64 -plugin; needs the dynamically linked qemu-user, not -static)
# 3. if DEST (sysroot) is given/exists: runs test_plugin.py under qemu in both
#    counting modes, which checks exact counts on hand-assembled aarch64 loops.
# Idempotent: rebuilds only when insn_plugin.c or the header changed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ARM_BUILD=${ARM_BUILD:-$HERE/../build/arm}
DEST=${1:-$ARM_BUILD/sysroot}
log() { printf '[build_plugin %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

command -v qemu-aarch64 >/dev/null || { echo "qemu-aarch64 missing: run setup_sysroot.sh first" >&2; exit 1; }
command -v gcc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev
"$HERE/get_qemu_plugin_header.sh" "$ARM_BUILD/third_party"

SO=$ARM_BUILD/libinsn.so
if [[ ! -f $SO || $HERE/insn_plugin.c -nt $SO || $ARM_BUILD/third_party/qemu-plugin.h -nt $SO ]]; then
    log "compiling $SO against qemu-plugin.h of qemu $(cat "$ARM_BUILD/third_party/qemu-plugin.h.version")"
    nice -n 10 gcc -O2 -g -Wall -Wextra -Wno-unused-parameter -std=gnu11 -fPIC -shared \
        -I "$ARM_BUILD/third_party" -o "$SO" "$HERE/insn_plugin.c" -lpthread
else
    log "$SO up to date"
fi

BB=$ARM_BUILD/libbb.so
if [[ ! -f $BB || $HERE/bb_plugin.c -nt $BB || $ARM_BUILD/third_party/qemu-plugin.h -nt $BB ]]; then
    log "compiling $BB (per-block counts for the cycle estimates)"
    nice -n 10 gcc -O2 -g -Wall -Wextra -Wno-unused-parameter -std=gnu11 -fPIC -shared \
        -I "$ARM_BUILD/third_party" -o "$BB" "$HERE/bb_plugin.c" -lpthread
fi

if [[ -x $DEST/usr/bin/python3.11 ]]; then
    log "self-test bb_plugin"
    out=$(mktemp)
    DEST=$DEST "$HERE/qemu_py.sh" --cpu cortex-a72 --plugin "$BB,out=$out" "$HERE/test_plugin.py"
    /usr/bin/python3 "$HERE/test_plugin.py" --check-bb "$out" | sed 's/^/    /' >&2
    rc=${PIPESTATUS[0]}
    rm -f "$out"
    ((rc == 0)) || { log "bb_plugin self-test FAILED"; exit 1; }
    for mode in inline tb; do
        log "self-test mode=$mode"
        out=$(mktemp)
        DEST=$DEST "$HERE/qemu_py.sh" --cpu cortex-a72 --plugin "$SO,mode=$mode,out=$out" \
            "$HERE/test_plugin.py"
        /usr/bin/python3 "$HERE/test_plugin.py" --check "$out" | sed 's/^/    /' >&2
        rc=${PIPESTATUS[0]}
        rm -f "$out"
        ((rc == 0)) || { log "plugin self-test FAILED (mode=$mode)"; exit 1; }
    done
fi
log "ok: use  qemu-aarch64 -plugin $SO[,mode=inline|tb][,out=FILE][,mark_nr=N][,verbose=on] ..."
