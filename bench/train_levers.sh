#!/usr/bin/env bash
# Training levers side by side (issue 10): each run trains with `finpulse model train` on the same
# split (seed 13, test share 0.5 of the held-out rows) and is then scored on
#   - the test split that training never reads (sentiment, topic), and validation,
#   - out of domain: the 1,300 labelled 2020 stock tweets, held-out StockTwits comments, surge tweets,
#   - the checklist, and held-out SEntFiN entity rows (entity head against copying the document label).
# Usage: bench/train_levers.sh OUT_DIR [RUN ...]
#   runs: shipped (models/shipped, evaluated only) full full_mark full_nocomments lora full_ls full_seed7
#   full_seed7_avg (evaluated only: the checkpoint average full_seed7 writes, --average-last 3)
#   teacher_mpnet (all-mpnet-base-v2 from bench/fetch_teacher.sh, 1 epoch, no entity head)
#   full_distill (full_mark distilled from teacher_mpnet)
#   full_cw0, full_cw1 (full_mark with class weights inverse frequency ^ 0 (plain CE) and ^ 1; full_mark has ^ 0.5)
#   full_len128 (full_mark reading up to 128 word pieces instead of 64)
#   span (round 5: the entity head reads the document's own pass, its mean and the mention's pieces; unmarked)
#   span_mark (span, with every linked entity's mentions marked « » in the document's one pass)
#   (full and lora read entity pairs as round 2 did, unmarked; the others mark the entity's mentions)
# bench/levers_table.py OUT_DIR prints the table. Reads ../shared (evaluation data), so it lives in bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bench/train_levers.sh OUT_DIR [RUN ...]}; shift
RUNS=("$@"); [ ${#RUNS[@]} -gt 0 ] || RUNS=(shipped full full_mark full_nocomments lora full_ls full_seed7)
SHARED=${FINPULSE_SHARED_DATA:-../shared/data}
THREADS=${THREADS:-2}
EPOCHS=${EPOCHS:-3}
export HF_HUB_OFFLINE=1
F=.venv/bin/finpulse
mkdir -p "$OUT"
[ -f "$OUT/split/sentiment_test.csv" ] || $F model split --out "$OUT/split" --test-share 0.5 >/dev/null

common=(--threads "$THREADS" --test-share 0.5)
# Rounds 1-4 read entity pairs (mean pooling); span's own --entity-pooling comes later and wins.
recipe=(--epochs "$EPOCHS" --no-progress --with-entities --entity-pooling mean)
for run in "${RUNS[@]}"; do
  model=$OUT/$run/model
  case $run in
    shipped)         model=models/shipped; args=() ;;
    full)            args=("${recipe[@]}" --mode full --with-comments --no-entity-mark) ;;
    full_mark)       args=("${recipe[@]}" --mode full --with-comments --entity-mark) ;;
    lora)            args=("${recipe[@]}" --mode lora --with-comments --no-entity-mark) ;;
    full_ls)         args=("${recipe[@]}" --mode full --with-comments --entity-mark --label-smoothing 0.1) ;;
    full_seed7)      args=("${recipe[@]}" --mode full --with-comments --entity-mark --seed 7 --split-seed 13 --average-last 3) ;;
    full_seed7_avg)  model=$OUT/full_seed7/model/averaged; args=() ;;
    full_nocomments) args=("${recipe[@]}" --mode full --entity-mark) ;;
    teacher_mpnet)   args=(--epochs 1 --mode full --with-comments --base "$(bench/fetch_teacher.sh)") ;;
    full_distill)    args=("${recipe[@]}" --mode full --with-comments --entity-mark --teacher "$OUT/teacher_mpnet/model") ;;
    full_cw0)        args=("${recipe[@]}" --mode full --with-comments --entity-mark --class-weight-power 0) ;;
    full_cw1)        args=("${recipe[@]}" --mode full --with-comments --entity-mark --class-weight-power 1) ;;
    full_len128)     args=("${recipe[@]}" --mode full --with-comments --entity-mark --max-length 128) ;;
    span)            args=("${recipe[@]}" --mode full --with-comments --no-entity-mark --entity-pooling span) ;;
    span_mark)       args=("${recipe[@]}" --mode full --with-comments --entity-mark --entity-pooling span) ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
  dir=$OUT/$run
  if [ ${#args[@]} -gt 0 ] && [ ! -f "$dir/trained" ]; then
    mkdir -p "$dir"
    echo "$(date -u +%FT%TZ) train $run: ${args[*]}"
    $F model train --out "$dir/model" "${common[@]}" "${args[@]}" >"$dir/train.json" 2>"$dir/train.log"
    touch "$dir/trained"
  fi
  r=$dir/reports; mkdir -p "$r"
  echo "$(date -u +%FT%TZ) evaluate $run"
  for task in sentiment topic; do
    for part in test val; do
      $F model eval --model "$model" --task $task --data "$OUT/split/${task}_${part}.csv" \
        --by source --json "$r/${task}_${part}.json" --threads "$THREADS" >/dev/null
    done
  done
  $F model eval-ood --model "$model" --three-class "$SHARED/replay/stock_market_tweets_2020.csv" \
    --binary "$SHARED/replay/surge_stock_tweets.csv" --comments-heldout --json "$r/ood.json" --threads "$THREADS" >/dev/null
  $F model checklist --model "$model" --json "$r/checklist.json" --threads "$THREADS" >/dev/null
  $F model entity-eval --model "$model" --json "$r/entity.json" --threads "$THREADS" >/dev/null
  echo "$(date -u +%FT%TZ) done $run"
done
