#!/usr/bin/env bash
# The learning-rate transfer check of the gutenberg-en recipe on one GPU: unpack, tokenize, the
# check (PROCS processes share its 21 runs through the store's leases), and on WARN/FAIL the same
# check again with the [train] lr_scaling it suggests.  Usage:
#   bash examples/gutenberg/transfer_study.sh LOG_DIR [CORPUS_DIR]
set -u
LOG=${1:?log folder}; CORPUS=${2:-}
SPEC=specs/gutenberg_transfer.toml; SCALED=specs/gutenberg_transfer_scaled.toml; PROCS=${PROCS:-6}
ARGS="--middle --max-steps 1200"
mkdir -p "$LOG"
stamp() { echo "$(date +%s) $*" >> "$LOG/progress.txt"; }
stamp start
source "$(dirname "$0")/prepare.sh"

check() {  # check SPEC TAG: PROCS processes train the runs, then one writes the verdict
    for i in $(seq "$PROCS"); do python3 -m flops_fit transfer "$1" $ARGS > /dev/null 2> "$LOG/$2-$i.log" & done
    wait
    python3 -m flops_fit transfer "$1" $ARGS --json > "$LOG/$2.json" 2> "$LOG/$2.log"
    stamp "$2 rc=$?"
}

check "$SPEC" transfer
python3 - "$LOG/transfer.json" "$SPEC" "$SCALED" <<'PY'
import json, re, sys
doc = json.load(open(sys.argv[1]))
print("verdict", doc["verdict"], "suggestion", doc.get("suggestion"))
if doc["verdict"] == "PASS" or not doc.get("suggestion"):
    sys.exit(0)
text = open(sys.argv[2]).read().replace('name = "gutenberg_transfer"', 'name = "gutenberg_transfer_scaled"')
lr, scaling = doc["suggestion"].split("\n")
text = re.sub(r"^learning_rate = .*$", lr + "  # from the first check's suggestion", text, flags=re.M)
text = text.replace("[train]\n", "[train]\n" + scaling + "\n", 1)
open(sys.argv[3], "w").write(text)
PY
if [ -f "$SCALED" ]; then cp "$SCALED" "$LOG/"; check "$SCALED" transfer_scaled; fi
stamp done
