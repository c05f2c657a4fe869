#!/usr/bin/env bash
# Branching against training from scratch on one GPU, side by side: the gutenberg-en sweep with
# the wsd schedule, reuse = "none" (specs/gutenberg_wsd.toml) then reuse = "branch"
# (specs/gutenberg_branch.toml), each timed; then both fits compared.
# Usage: bash examples/gutenberg/branch_study.sh LOG_DIR [CORPUS_DIR]
set -u
LOG=${1:?log folder}; CORPUS=${2:-}
mkdir -p "$LOG"
stamp() { echo "$(date +%s.%N) $*" >> "$LOG/progress.txt"; }
stamp start
source "$(dirname "$0")/prepare.sh"
python3 -m flops_fit estimate specs/gutenberg_branch.toml --json > "$LOG/estimate_branch.json" 2> "$LOG/estimate_branch.log"
stamp estimated
for name in wsd branch; do
  stamp "start $name"
  python3 -m flops_fit run specs/gutenberg_$name.toml --json > "$LOG/run_$name.json" 2> "$LOG/run_$name.log"
  stamp "done $name rc=$?"
done
python3 -m flops_fit compare specs/gutenberg_wsd.toml specs/gutenberg_branch.toml --json > "$LOG/compare.json" 2> "$LOG/compare.log"
stamp "compared rc=$?"
tar czf "$LOG/stores.tgz" --exclude=lock --exclude=checkpoints --exclude=pinned runs/gutenberg_wsd runs/gutenberg_branch
stamp done
