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
args=(-L "$DEST" -cpu "$CPU" ${QEMU_SEED:+-seed "$QEMU_SEED"})
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
