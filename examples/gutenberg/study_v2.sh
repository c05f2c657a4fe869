#!/usr/bin/env bash
# The second round of the gutenberg-en GPU study, end to end on one GPU (docs/gutenberg_gpu_v2/):
#   1. the learning-rate transfer check of the recipe (specs/gutenberg_transfer_v2.toml, three
#      widths x seven rates), and its suggested learning_rate / lr_scaling written into
#      specs/gutenberg_gpu_v2.toml;
#   2. the sweep (5 budgets x 7 sizes, 3 seeds at one budget) and its fits;
#   3. predictions at 2e15 and 4e15 FLOPs registered before anything trains there (parametric,
#      data-constrained; and the IsoFLOP law's), then the five sizes around each trained
#      (--bracket adds a size while the best is at an edge) and scored.
# Every step is cached in the stores (runs/gutenberg_*_v2), so a run cut off by SECONDS picks up
# where it stopped when started again over the same stores.  Usage:
#   [TRANSFER=0] [PROCS=6] bash examples/gutenberg/study_v2.sh LOG_DIR [CORPUS_DIR] [SECONDS]
set -u
LOG=${1:?log folder}; CORPUS=${2:-}; LIMIT=${3:-0}
SPEC=specs/gutenberg_gpu_v2.toml; CHECK=specs/gutenberg_transfer_v2.toml; PROCS=${PROCS:-6}
BUDGETS="2e15 4e15"
START=$(date +%s)
mkdir -p "$LOG"
stamp() { echo "$(date +%s) $*" >> "$LOG/progress.txt"; }
left() { if [ "$LIMIT" = 0 ]; then echo 86400; else echo $((START + LIMIT - $(date +%s))); fi; }
ff() {  # flops-fit under what is left of SECONDS (SIGTERM: it stops cleanly, cached work stays)
    local t; t=$(left); [ "$t" -gt 10 ] || return 124
    timeout -s TERM -k 30 "$t" python3 -m flops_fit "$@"
}
stamp start
source "$(dirname "$0")/prepare.sh"
# The sweep and the registered predictions as committed (docs/gutenberg_gpu_v2/store.tgz, no
# checkpoints): a fresh checkout goes on from them instead of training the sweep again.
if [ ! -d runs/gutenberg_gpu_v2 ] && [ -f docs/gutenberg_gpu_v2/store.tgz ]; then
    tar xzf docs/gutenberg_gpu_v2/store.tgz && stamp "store restored from docs/gutenberg_gpu_v2/store.tgz"
fi

# 1. Does one rate serve every width?  PROCS processes share the 21 runs through the store's leases.
# TRANSFER=0 skips the check (the spec's rate as it stands).
if [ "${TRANSFER:-1}" != 0 ]; then
for i in $(seq "$PROCS"); do
    ff transfer "$CHECK" --middle --max-steps 600 > /dev/null 2> "$LOG/transfer-$i.log" &
done
wait
ff transfer "$CHECK" --middle --max-steps 600 --json > "$LOG/transfer.json" 2> "$LOG/transfer.log"
rc=$?; stamp "transfer rc=$rc"; [ $rc = 0 ] || exit $rc
python3 - "$LOG/transfer.json" "$SPEC" <<'PY' >> "$LOG/progress.txt"
import json, re, sys
doc = json.load(open(sys.argv[1]))
print("transfer verdict", doc["verdict"], "suggestion", json.dumps(doc.get("suggestion")))
if doc["verdict"] == "PASS" or not doc.get("suggestion"):
    sys.exit(0)
text = open(sys.argv[2]).read()
lr, scaling = doc["suggestion"].split("\n")
note = "  # at base_width 128, from the transfer check"
text = re.sub(r"^learning_rate = .*$", lr + note, text, flags=re.M)
text = re.sub(r"^lr_scaling = .*\n", "", text, flags=re.M)
text = re.sub(r"^(learning_rate = .*\n)", r"\1" + scaling + "\n", text, count=1, flags=re.M)
open(sys.argv[2], "w").write(text)
PY
fi
cp "$SPEC" "$LOG/"

# 2. The sweep and its fits.
[ -s "$LOG/estimate.json" ] || ff estimate "$SPEC" --json > "$LOG/estimate.json" 2> "$LOG/estimate.log"
ff run "$SPEC" --json > "$LOG/run.json" 2> "$LOG/run.log"
rc=$?; stamp "swept rc=$rc"; [ $rc = 0 ] || exit $rc

# 3. Forward checks: every prediction registered before any of them trains.
for B in $BUDGETS; do
    ff confirm "$SPEC" --budget "$B" --sizes 5 --predict-only --json > "$LOG/prediction-$B.json" \
        2> "$LOG/register-$B.log"
    ff confirm "$SPEC" --budget "$B" --sizes 5 --approach isoflop --predict-only --json \
        > "$LOG/prediction-$B-isoflop.json" 2> "$LOG/register-$B-isoflop.log"
done
stamp registered
for B in $BUDGETS; do
    ff confirm "$SPEC" --budget "$B" --sizes 5 --bracket --json > "$LOG/confirm-$B.json" \
        2> "$LOG/confirm-$B.log"
    stamp "confirmed $B rc=$?"
done
for B in $BUDGETS; do
    ff confirm "$SPEC" --budget "$B" --sizes 5 --approach isoflop --json > "$LOG/confirm-$B-isoflop.json" \
        2> "$LOG/confirm-$B-isoflop.log"
    stamp "confirmed $B isoflop rc=$?"
done
stamp done
