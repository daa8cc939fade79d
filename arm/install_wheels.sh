#!/usr/bin/env bash
# install_wheels.sh DEST SITE
#
# Install linux-aarch64 CPython 3.11 wheels into SITE (a plain --target dir,
# normally inside DEST, e.g. DEST/opt/armlab/site) with the x86 HOST pip, then
# verify them under qemu with -cpu cortex-a72 and -cpu cortex-a76.
#
#   main set  : numpy==1.26.4 onnxruntime==1.32.0            -> SITE
#   optional  : ai-edge-litert==2.3.0 (+numpy==1.26.4)       -> SITE-litert
#               tflite-runtime==2.14.0 (+numpy==1.26.4)      -> SITE-tflite
#   (separate dirs so a TFLite problem can never change the main set; put
#    SITE-litert on PYTHONPATH instead of SITE to use it)
#
# Env: PYTHON (host python with pip; default pyenv 3.11.7), EXTRAS=0 to skip the
# TFLite wheels, VERIFY=0 to skip the qemu checks, FORCE=1 to reinstall.
# Idempotent: each target dir carries a stamp with its exact spec; a matching
# stamp skips the pip step.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEST=${1:?usage: install_wheels.sh DEST SITE}
SITE=${2:?usage: install_wheels.sh DEST SITE}
DEST=$(realpath -m "$DEST"); SITE=$(realpath -m "$SITE")
PYTHON=${PYTHON:-$(command -v python3.11)}
MAIN_SPEC=${MAIN_SPEC:-"numpy==1.26.4 onnxruntime==1.32.0"}
log() { printf '[install_wheels %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[[ -x $DEST/usr/bin/python3.11 ]] || { echo "no sysroot at $DEST (run setup_sysroot.sh first)" >&2; exit 1; }

# Platform tags: bookworm has glibc 2.36, so every manylinux_2_17..2_36 aarch64
# tag is valid. The narrower set from the brief (2014/2_17/2_28) is enough for
# numpy and onnxruntime (onnxruntime 1.32.0 ships manylinux_2_28 only), but NOT
# for ai-edge-litert 2.3.0 (manylinux_2_27) or tflite-runtime 2.14.0 (manylinux_2_34).
TAGS=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311
      --platform manylinux2014_aarch64)
for m in $(seq 17 36); do TAGS+=(--platform "manylinux_2_${m}_aarch64"); done

# pip_target DIR SPEC... : (re)install SPEC into DIR unless DIR/.armlab-spec matches
pip_target() {
    local dir=$1; shift
    local spec="$* | tags=manylinux_2_17..2_36 cp311"
    if [[ ${FORCE:-0} != 1 && -f $dir/.armlab-spec && "$(cat "$dir/.armlab-spec")" == "$spec" ]]; then
        log "$dir up to date ($*)"; return 0
    fi
    log "pip install --target $dir $*"
    rm -rf "$dir.tmp"
    if ! nice -n 10 "$PYTHON" -m pip install --disable-pip-version-check --no-compile \
            "${TAGS[@]}" --target "$dir.tmp" "$@" > "$dir.pip.log" 2>&1; then
        log "pip FAILED for $* (see $dir.pip.log):"; grep -E '^ERROR' "$dir.pip.log" >&2 || tail -5 "$dir.pip.log" >&2
        rm -rf "$dir.tmp"; return 1
    fi
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
    echo "$spec" > "$dir/.armlab-spec"
    grep -E '^Successfully installed' "$dir.pip.log" >&2 || true
}

mkdir -p "$(dirname "$SITE")"
# shellcheck disable=SC2086
pip_target "$SITE" $MAIN_SPEC

extras_status=()
if [[ ${EXTRAS:-1} == 1 ]]; then
    if pip_target "$SITE-litert" ai-edge-litert==2.3.0 numpy==1.26.4; then
        extras_status+=("ai-edge-litert==2.3.0:installed:$SITE-litert")
    else extras_status+=("ai-edge-litert==2.3.0:NO-WHEEL"); fi
    if pip_target "$SITE-tflite" tflite-runtime==2.14.0 numpy==1.26.4; then
        extras_status+=("tflite-runtime==2.14.0:installed:$SITE-tflite")
    else extras_status+=("tflite-runtime==2.14.0:NO-WHEEL"); fi
fi

[[ ${VERIFY:-1} == 1 ]] || exit 0

# ---------------------------------------------------------------- import check under qemu
# (the bundle self-check in arm_check.py compares outputs with the host's)
rc=0
for cpu in cortex-a72 cortex-a76; do
    if out=$(DEST=$DEST "$HERE/qemu_py.sh" --cpu "$cpu" --site "$SITE" -c \
            "import numpy, onnxruntime; print('numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)" 2>&1); then
        log "$cpu: $(echo "$out" | tail -1)"
    else
        log "$cpu: import FAILED: $(echo "$out" | tail -3 | tr '\n' ' ')"; rc=1
    fi
done

for e in "${extras_status[@]}"; do
    IFS=: read -r name status dir <<<"$e"
    [[ $status == installed ]] || { log "$name: $status"; continue; }
    mod=$([[ $name == ai-edge-litert* ]] && echo ai_edge_litert.interpreter || echo tflite_runtime.interpreter)
    for cpu in cortex-a72 cortex-a76; do
        if out=$(DEST=$DEST "$HERE/qemu_py.sh" --cpu "$cpu" --site "$dir" -c \
                "import numpy, $mod as m; print('numpy', numpy.__version__, 'Interpreter', m.Interpreter.__name__, 'OK')" 2>&1); then
            log "$name on $cpu: import OK ($(echo "$out" | tail -1))"
        else
            log "$name on $cpu: import FAILED: $(echo "$out" | tail -3 | tr '\n' ' ')"
        fi
    done
done
exit $rc
