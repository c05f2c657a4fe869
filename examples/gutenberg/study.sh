#!/usr/bin/env bash
# The gutenberg-en GPU study end to end: unpack, tokenize, sweep, fit, pre-register a
# prediction at 4e15 FLOPs, train the three sizes around it (three processes share them through
# the store's locks), report.  Usage: bash examples/gutenberg/study.sh LOG_DIR [CORPUS_DIR]
# CORPUS_DIR holds the corpus as shipped (train.txt.ppmd, val.txt.xz, manifest.json, unpack.py).
set -u
LOG=${1:?log folder}; CORPUS=${2:-}
SPEC=specs/gutenberg_gpu.toml; BUDGET=4e15
mkdir -p "$LOG"
stamp() { echo "$(date +%s) $*" >> "$LOG/progress.txt"; }
stamp start
source "$(dirname "$0")/prepare.sh"
python3 -m flops_fit estimate "$SPEC" --json > "$LOG/estimate.json" 2> "$LOG/estimate.log"
stamp estimated
python3 -m flops_fit run "$SPEC" --json > "$LOG/run.json" 2> "$LOG/run.log"
stamp "swept rc=$?"
python3 -m flops_fit confirm "$SPEC" --budget $BUDGET --predict-only --json > "$LOG/prediction.json" 2> "$LOG/confirm0.log"
stamp "registered rc=$?"
for i in 1 2 3; do python3 -m flops_fit confirm "$SPEC" --budget $BUDGET > /dev/null 2> "$LOG/confirm$i.log" & done
wait
stamp confirmed
python3 -m flops_fit confirm "$SPEC" --budget $BUDGET --json > "$LOG/confirm.json" 2> "$LOG/confirm.log"
stamp "reported rc=$?"
tar czf "$LOG/store.tgz" --exclude=lock --exclude=checkpoints runs/gutenberg_gpu
stamp done
