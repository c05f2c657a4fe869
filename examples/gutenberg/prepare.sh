# Sourced by study.sh and branch_study.sh: unpack the shipped corpus (when CORPUS is given) into
# data/gutenberg-en and tokenize it, logging under LOG.  Needs LOG, CORPUS and stamp() set.
if [ -n "$CORPUS" ]; then mkdir -p data/gutenberg-en && (cd "$CORPUS" && python3 unpack.py "$OLDPWD/data/gutenberg-en") > "$LOG/unpack.log" 2>&1; fi
stamp unpacked
python3 -c "from examples.gutenberg import data; [data.tokens('data/gutenberg-en', s) for s in ('val', 'train')]" > "$LOG/tokenize.log" 2>&1
stamp tokenized
