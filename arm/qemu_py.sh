#!/usr/bin/env bash
# qemu_py.sh [--cpu CPU] [--plugin 'FILE[,arg=val...]'] [--site SITE] [--] [python args...]
#
# Run the sysroot's aarch64 CPython 3.11 under qemu-user (no binfmt), with a
# clean, reproducible guest environment:
#   qemu-aarch64 -L $DEST -cpu $CPU [-plugin ...] $DEST/usr/bin/python3.11 ARGS...
# Defaults: DEST=$ARM_BUILD/sysroot (ARM_BUILD defaults to build/arm), SITE=$DEST/opt/armlab/site, CPU=cortex-a72.
# Env passed to the guest (everything else is dropped): PATH, LANG=C.UTF-8,
# HOME=XDG_CACHE_HOME parent=$GUEST_HOME (default $ARM_BUILD/guest_home),
# PYTHONPATH=$SITE, PYTHONHASHSEED=0 (deterministic dict/set probing, so
# instruction counts repeat), ORT_DISABLE_TELEMETRY=1 (onnxruntime's PyPI build
# otherwise writes a device id + event DB under ~/.cache/Microsoft/DeveloperTools),
# OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS=1, plus GUEST_ENV (space-separated
# NAME=VALUE list) for extras. QEMU_SEED=N adds `-seed N`.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ARM_BUILD=${ARM_BUILD:-$HERE/../build/arm}
DEST=${DEST:-$ARM_BUILD/sysroot}
SITE=${SITE:-$DEST/opt/armlab/site}
CPU=${CPU:-cortex-a72}
PLUGIN=${PLUGIN:-}
while (($#)); do
    case $1 in
        --cpu) CPU=$2; shift 2 ;;
        --plugin) PLUGIN=$2; shift 2 ;;
        --site) SITE=$2; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
QEMU=$(command -v qemu-aarch64) || { echo "qemu-aarch64 not found (run setup_sysroot.sh)" >&2; exit 1; }
# The guest's /proc/cpuinfo. qemu 7.2 does not emulate it for aarch64, so through -L the guest
# reads the host's x86 file, which pytorch-cpuinfo (inside onnxruntime and inside LiteRT's
# XNNPACK) cannot use: DEST's empty possible/present lists make it fail cleanly (setup_sysroot.sh).
# onnxruntime then takes the ISA from getauxval(AT_HWCAP), which qemu fills in from -cpu; XNNPACK
# does not, and ran without its dot-product kernels on the emulated cortex-a76 (twentieth session:
# lenet_pool.int8.full.tflite 566,250 -> 300,785 instructions per inference in arm-check, docs/device.md). So a
# known core gets a guest root of its own, DEST.root-CPU: DEST's tree as hard links, plus
# proc/cpuinfo with the core's MIDR (cpuinfo names the core from it; its ISA still comes from
# AT_HWCAP) and sys/devices/system/cpu/{possible,present} = 0, one CPU as the runs use. Paths
# not in the root fall through to the host's, as they do for DEST. Other cores keep DEST.
# Hard links, not symlinks to DEST's top-level entries (v1): the guest's realpath() read /tmp or
# /home as such a symlink and resolved a checkout there (/tmp/x/build/arm/bundle) to
# DEST/tmp/x/..., which does not exist (twenty-fifth session: a clone under /tmp failed arm-check).
ROOT=$DEST
case $CPU in  # CPU implementer, variant, part, revision (as a Raspberry Pi 4 / 5 reports them)
    cortex-a72) MIDR=(0x41 0x0 0xd08 3) FEATURES="fp asimd evtstrm crc32 cpuid" ;;
    cortex-a76) MIDR=(0x41 0x4 0xd0b 1) FEATURES="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    *) MIDR=() ;;
esac
if ((${#MIDR[@]})); then
    ROOT=${DEST%/}.root-$CPU
    made="v2 $CPU $(cat "$DEST/.armlab-sysroot-ok" 2>/dev/null || true)"
    exec 9>"$ROOT.lock"
    flock 9  # parallel runs of one core build it once
    if [[ $(cat "$ROOT/.made-from" 2>/dev/null || true) != "$made" ]]; then
        tmp=$(mktemp -d "$ROOT.XXXXXX")
        chmod 755 "$tmp"
        for e in "$DEST"/* "$DEST"/.[!.]*; do
            [[ -e $e || -L $e ]] || continue
            case ${e##*/} in proc | sys | .armlab-sysroot-ok) ;; *) cp -al "$e" "$tmp/" ;; esac
        done
        mkdir -p "$tmp/proc" "$tmp/sys/devices/system/cpu"
        printf 'processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: %s\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
            "$FEATURES" "${MIDR[@]}" > "$tmp/proc/cpuinfo"
        echo 0 > "$tmp/sys/devices/system/cpu/possible"
        echo 0 > "$tmp/sys/devices/system/cpu/present"
        echo "$made" > "$tmp/.made-from"
        rm -rf "$ROOT"
        mv -T "$tmp" "$ROOT"
    fi
    exec 9>&-
fi
args=(-L "$ROOT" -cpu "$CPU" ${QEMU_SEED:+-seed "$QEMU_SEED"})
[[ -n $PLUGIN ]] && args+=(-plugin "$PLUGIN")
# HOME/XDG_CACHE_HOME: a real directory under armlab. With -L, a guest path that
# does not exist in DEST falls through to the HOST path, so HOME=/root would let
# guest programs create files in the host's /root (onnxruntime did exactly that).
GHOME=${GUEST_HOME:-$ARM_BUILD/guest_home}
mkdir -p "$GHOME"
# ASLR off (setarch -R) so guest addresses, and with them address-dependent
# code paths, are the same in every run. ARMLAB_ASLR=1 keeps ASLR on.
NORAND=()
if [[ ${ARMLAB_ASLR:-0} != 1 ]] && setarch "$(uname -m)" -R true 2>/dev/null; then
    NORAND=(setarch "$(uname -m)" -R)
fi
# shellcheck disable=SC2086
# nice: the machine's other core runs benchmarks (ARMLAB_NICE=0 to disable)
exec nice -n "${ARMLAB_NICE:-10}" "${NORAND[@]}" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$GHOME" XDG_CACHE_HOME="$GHOME/.cache" \
    LANG=C.UTF-8 PYTHONPATH="$SITE" PYTHONHASHSEED=0 ORT_DISABLE_TELEMETRY=1 \
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 ${GUEST_ENV:-} \
    "$QEMU" "${args[@]}" "$DEST/usr/bin/python3.11" "$@"
