#!/usr/bin/env bash
# Build .gpu/bundle.tar.xz: the TTS engines (espeak-ng + flite with their shared libraries and
# English data) and the corpus text, for tools/gpu_train.sh on a lent GPU machine, which has no
# package registry.  Needs: apt-get install espeak-ng flite bible-kjv wordnet-base fortunes-min
#
#   [TRAIN_ROUND=0] [HOURS=20] bash tools/make_gpu_bundle.sh     # the same values gpu_train.sh is run with
#
# Size: the device tool carries at most 64 MiB together with the tracked files (~50 MB), so the bundle
# must stay under ~16 MB.  Two things keep it there:
# - texts.txt keeps only the sentences that `corpus synth --train-round TRAIN_ROUND --train-hours HOURS`
#   reads (the evaluation splits + that round's training sentences, found with lab.corpus.plan_jobs
#   itself); every other line becomes "." so that line numbers, and with them the splits, stay the same.
#   texts.info records TRAIN_ROUND and HOURS; gpu_train.sh refuses to run with other values.
# - shared libraries that every Debian/Ubuntu base system has (libc, libzstd, libsystemd, libgcrypt, ...)
#   are not copied.
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN_ROUND=${TRAIN_ROUND:-0}
HOURS=${HOURS:-20}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/bin" "$W/lib" .gpu
cp "$(command -v espeak-ng)" "$(command -v flite)" "$W/bin/"
for f in $(ldd "$(command -v espeak-ng)" "$(command -v flite)" | awk '/=>/{print $3}' | sort -u); do
  case $(basename "$f") in
    libc.so*|libm.so*|libpthread*|libdl.so*|librt.so*) ;;
    libzstd.so*|libsystemd.so*|libgcrypt.so*|libgpg-error.so*|liblzma.so*|liblz4.so*|libcap.so*) ;;
    *) cp -L "$f" "$W/lib/";;
  esac
done
data=$(dirname "$(find /usr/lib /usr/share -name phontab -path '*espeak-ng-data*' | head -1)")
cp -r "$data" "$W/espeak-ng-data"
for d in "$W"/espeak-ng-data/*_dict; do [ "$(basename "$d")" = en_dict ] || rm "$d"; done
python3 -m lab.corpus texts -o "$W/texts_full.txt"
python3 - "$W/texts_full.txt" "$W/texts.txt" "$TRAIN_ROUND" "$HOURS" <<'PY'
import sys
from lab.corpus import plan_jobs
src, dst, rnd, hours = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
texts = [l.strip() for l in open(src) if l.strip()]
used = {j[4] for j in plan_jobs(texts, "/unused", hours, train_round=rnd)}
assert "." not in used
with open(dst, "w") as f:
    f.writelines((t if t in used else ".") + "\n" for t in texts)
print(f"texts.txt: {len(used)} of {len(texts)} sentences kept (round {rnd}, {hours} h)")
PY
rm "$W/texts_full.txt"
printf 'train_round=%s hours=%s\n' "$TRAIN_ROUND" "$HOURS" > "$W/texts.info"
tar cf - -C "$W" bin lib espeak-ng-data texts.txt texts.info | xz -T2 -9 > .gpu/bundle.tar.xz
ls -la .gpu/bundle.tar.xz
