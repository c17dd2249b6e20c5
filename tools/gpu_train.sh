#!/usr/bin/env bash
# Train the reference models on a lent GPU in one shot (device tool, <= 10 minutes):
#   synthesize the TTS corpus on the GPU machine's CPUs (espeak-ng + flite carried as a
#   bundle built by tools/make_gpu_bundle.sh), compute mel features, train the models
#   concurrently until a shared deadline, evaluate, and leave fp16 checkpoints in $OUT.
# Usage (device tool): [TRAIN_ROUND=N HOURS=H] bash tools/make_gpu_bundle.sh here, then on the device (same values)
#   [BUDGET=560] [RESUME=1] [TRAIN_ROUND=0] [HOURS=20] [MODELS="quartznet5x5 ..."] [MAX_FRAMES=24000] [LR_SCALE=1]
#   [EVAL_SPLITS=test] [EVAL_S=110] bash tools/gpu_train.sh   with carry [".gpu"], timeout_s 595
# TRAIN_ROUND=N > 0 synthesizes fresh training sentences and voices (lab.corpus --train-round; the
# evaluation splits are unchanged): continued training on round 0 again mostly re-fits audio the models have
# memorised (docs/results.md, Session 10).  MODELS (default: all four) picks the ones to train, so those that
# still miss their WER target get the GPU to themselves.
set -uo pipefail
# checked first, so that a typo costs no device time
ALL_MODELS="quartznet5x5 quartznet-tiny jasper-dr-small conformer-ctc-small"
MODELS=${MODELS:-$ALL_MODELS}
in_list() { case " $2 " in *" $1 "*) return 0;; *) return 1;; esac; }
want() { in_list "$1" "$MODELS"; }
for m in $MODELS; do in_list "$m" "$ALL_MODELS" || { echo "unknown model in MODELS: $m ($ALL_MODELS)"; exit 2; }; done
START=$(date +%s)
BUDGET=${BUDGET:-560}              # seconds this script may use in total
TRAIN_END=$((START + BUDGET - ${EVAL_S:-110})) # evaluating 3 splits + saving took ~90 s in the first run
OUT=${OUT:-/tmp/zsq_out}; mkdir -p "$OUT"
W=/tmp/zsq; mkdir -p $W/tts $W/wrap
exec > >(tee "$OUT/gpu_train.log") 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
tar xJf .gpu/bundle.tar.xz -C $W/tts
# a bundle's texts.txt holds only the sentences of the round and hours it was built for (make_gpu_bundle.sh)
if [ -f $W/tts/texts.info ] && [ "$(cat $W/tts/texts.info)" != "train_round=${TRAIN_ROUND:-0} hours=${HOURS:-20}" ]; then
  echo "error: .gpu/bundle.tar.xz was built for $(cat $W/tts/texts.info), not train_round=${TRAIN_ROUND:-0} hours=${HOURS:-20}:"
  echo "       rebuild it with TRAIN_ROUND=${TRAIN_ROUND:-0} HOURS=${HOURS:-20} bash tools/make_gpu_bundle.sh"; exit 2
fi
for b in espeak-ng flite; do
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/tts/lib ESPEAK_DATA_PATH=%s/tts exec %s/tts/bin/%s "$@"\n' $W $W $W $b > $W/wrap/$b
  chmod +x $W/wrap/$b
done
export PATH=$W/wrap:$PATH PYTHONUNBUFFERED=1
espeak-ng -v en-us --stdout "check" | wc -c; flite -voice slt -t "check" -o $W/f.wav && ls -la $W/f.wav
python3 -m lab.corpus synth --texts $W/tts/texts.txt -o $W/corpus --train-hours ${HOURS:-20} \
  --train-round ${TRAIN_ROUND:-0} --workers $(nproc) --time-limit ${SYNTH_LIMIT:-150} 2>&1 | grep -v "synthesizing:" 
echo "synth done at +$(( $(date +%s) - START )) s"
python3 -m lab.train prep --corpus $W/corpus -o $W/feats 2>&1 | grep -v "mel "
echo "prep done at +$(( $(date +%s) - START )) s"
mkdir -p "$OUT/ckpt"
# MAX_FRAMES: frames per batch (48000 in run 2 gave less audio per minute than 24000 with four trainings on one H100);
# EVAL_SPLITS: splits evaluated on the device (the rest are evaluated later with `zsq eval`).
fit() { python3 -m lab.train fit --feats $W/feats -o "$OUT/ckpt" --json-dir $W --deadline $TRAIN_END \
          --max-frames ${MAX_FRAMES:-24000} --eval-splits "${EVAL_SPLITS:-}" --train-round ${TRAIN_ROUND:-0} "$@"; }
# RESUME=1 continues from the shipped checkpoints (warm-up shortened) instead of starting afresh.
res() { [ "${RESUME:-0}" = 1 ] && echo "--resume zsq_tvm/zoo/models/$1.pt"; }
LRS=${LR_SCALE:-1}
lr() { python3 -c "print($1 * $LRS)"; }
want quartznet5x5 && fit --arch quartznet5x5 --lr $(lr 3e-3) --warmup 300 $(res quartznet5x5) &
want quartznet-tiny && fit --arch quartznet-tiny --lr $(lr 3e-3) --warmup 300 $(res quartznet-tiny) &
want jasper-dr-small && fit --arch jasper-dr-small --lr $(lr 2e-3) --warmup 300 $(res jasper-dr-small) &
want conformer-ctc-small && fit --arch conformer-ctc-small --lr $(lr 1.5e-3) --warmup 500 $(res conformer-ctc-small) &
wait
echo "all done at +$(( $(date +%s) - START )) s"
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob("/tmp/zsq/*.json")):
    m = json.load(open(f))
    print(m["arch"], m["steps"], "steps", round(m["hours_seen"], 1), "h seen",
          {k: round(v["wer"] * 100, 2) for k, v in m.get("eval", {}).items()})
PY
