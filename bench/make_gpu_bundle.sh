#!/usr/bin/env bash
# Build .gpu/bundle.tar.xz: the TTS engines (espeak-ng + flite with their shared libraries and
# English data) and the corpus text, for bench/gpu_train.sh on a lent GPU machine, which has no
# package registry.  Needs: apt-get install espeak-ng flite bible-kjv wordnet-base fortunes-min
# (about 18 MB compressed; the device tool carries at most 64 MiB together with the tracked files).
set -euo pipefail
cd "$(dirname "$0")/.."
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/bin" "$W/lib" .gpu
cp "$(command -v espeak-ng)" "$(command -v flite)" "$W/bin/"
for f in $(ldd "$(command -v espeak-ng)" "$(command -v flite)" | awk '/=>/{print $3}' | sort -u); do
  case $(basename "$f") in libc.so*|libm.so*|libpthread*|libdl.so*|librt.so*) ;; *) cp -L "$f" "$W/lib/";; esac
done
data=$(dirname "$(find /usr/lib /usr/share -name phontab -path '*espeak-ng-data*' | head -1)")
cp -r "$data" "$W/espeak-ng-data"
for d in "$W"/espeak-ng-data/*_dict; do [ "$(basename "$d")" = en_dict ] || rm "$d"; done
python3 -m zsq_tvm.data.corpus texts -o "$W/texts.txt"
tar cJf .gpu/bundle.tar.xz -C "$W" bin lib espeak-ng-data texts.txt
ls -la .gpu/bundle.tar.xz
