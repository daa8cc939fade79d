#!/usr/bin/env bash
# get_qemu_plugin_header.sh OUTDIR
#
# Debian ships no qemu-plugin.h in any binary package, so take it from the
# Debian *source* package that matches the installed qemu-user exactly
# (`apt-get source --download-only qemu=<source version>`), then extract only
# include/qemu/qemu-plugin.h (+ any Debian patch touching it).
#
# The host's apt configuration is NOT modified: a private deb-src list, lists
# dir and cache under OUTDIR/apt are used via -o Dir::... options.
# Result: OUTDIR/qemu-plugin.h and OUTDIR/qemu-plugin.h.version. Idempotent.
set -euo pipefail
OUT=${1:?usage: get_qemu_plugin_header.sh OUTDIR}
mkdir -p "$OUT"; OUT=$(realpath "$OUT")
log() { printf '[get_qemu_plugin_header %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

SRCVER=$(dpkg-query -W -f='${source:Version}' qemu-user)   # e.g. 1:7.2+dfsg-7+deb12u18
[[ -n $SRCVER ]] || { echo "qemu-user not installed" >&2; exit 1; }
if [[ -f $OUT/qemu-plugin.h && "$(cat "$OUT/qemu-plugin.h.version" 2>/dev/null)" == "$SRCVER" ]]; then
    log "qemu-plugin.h for qemu $SRCVER already present"; exit 0
fi

# Same mirrors the host's apt uses (deb822 or one-line), turned into deb-src lines.
W=$OUT/apt; mkdir -p "$W/lists/partial" "$W/cache/archives/partial" "$W/dl"
: > "$W/sources.list"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk -v kr="$KEYRING" 'BEGIN{RS=""; FS="\n"}
        { uri=""; suites=""; comps=""; deb=0
          for(i=1;i<=NF;i++){
            if($i ~ /^URIs:/){ sub(/^URIs:[ \t]*/,"",$i); uri=$i }
            if($i ~ /^Suites:/){ sub(/^Suites:[ \t]*/,"",$i); suites=$i }
            if($i ~ /^Components:/){ sub(/^Components:[ \t]*/,"",$i); comps=$i }
            if($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) deb=1 }
          if(deb && uri ~ /debian/){ n=split(suites,s,/[ \t]+/)
            for(j=1;j<=n;j++) if(s[j]!="") print "deb-src [signed-by=" kr "] " uri " " s[j] " " comps } }' "$f" >> "$W/sources.list"
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    grep -E '^deb[[:space:]]' "$f" | grep debian | sed 's/^deb /deb-src /' >> "$W/sources.list" || true
done
[[ -s $W/sources.list ]] || echo "deb-src [signed-by=$KEYRING] http://deb.debian.org/debian bookworm main" > "$W/sources.list"
log "private deb-src list:"; sed 's/^/    /' "$W/sources.list" >&2

APT=(apt-get -q -o "Dir::Etc::SourceList=$W/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
     -o "Dir::State::Lists=$W/lists" -o "Dir::Cache=$W/cache" -o "APT::Sandbox::User=root")
"${APT[@]}" update >&2
log "apt-get source --download-only qemu=$SRCVER"
(cd "$W/dl" && "${APT[@]}" source --download-only "qemu=$SRCVER" >&2)

ORIG=$(ls "$W"/dl/qemu_*.orig.tar.* | head -1)
log "extracting qemu-plugin.h from $(basename "$ORIG")"
tmp=$(mktemp -d)
tar -xf "$ORIG" -C "$tmp" --wildcards '*/include/qemu/qemu-plugin.h'
hdr=$(find "$tmp" -path '*/include/qemu/qemu-plugin.h' | head -1)
# Apply Debian patches that touch the header (normally none).
DEB=$(ls "$W"/dl/qemu_*.debian.tar.* | head -1)
mkdir -p "$tmp/deb"; tar -xf "$DEB" -C "$tmp/deb"
if [[ -f $tmp/deb/debian/patches/series ]]; then
    while read -r p _; do
        [[ -z $p || $p == \#* ]] && continue
        pf=$tmp/deb/debian/patches/$p
        if grep -q 'include/qemu/qemu-plugin.h' "$pf" 2>/dev/null; then
            # such a patch may touch other files too: apply it to the full tree
            srctop=$(dirname "$(dirname "$(dirname "$hdr")")")
            [[ -f $srctop/.full ]] || { tar -xf "$ORIG" -C "$tmp"; touch "$srctop/.full"; }
            log "applying Debian patch $p"
            (cd "$srctop" && patch -p1 --forward --no-backup-if-mismatch < "$pf" >&2)
        fi
    done < "$tmp/deb/debian/patches/series"
fi
cp "$hdr" "$OUT/qemu-plugin.h"
echo "$SRCVER" > "$OUT/qemu-plugin.h.version"
rm -rf "$tmp" "$W"   # drop the 24 MB source download and private apt lists
log "QEMU_PLUGIN_VERSION: $(grep -m1 -E '#define QEMU_PLUGIN_VERSION' "$OUT/qemu-plugin.h")"
