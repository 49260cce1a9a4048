#!/usr/bin/env bash
# Installs hybridrnn WITHOUT extras into a fresh venv (.venv-bare) and runs every command once, as a user who
# typed `pip install hybridrnn` would: each works, or says which extra to install (exit code 2, no traceback).
#   bash scripts/smoke_bare.sh          (needs ../shared/data for the language-model command)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PYTHON=${PYTHON:-python3}
rm -rf .venv-bare
"$PYTHON" -m venv .venv-bare
. .venv-bare/bin/activate
python -m pip install -q torch==2.13.0 "$REPO"        # torch pinned on the same line: never a CUDA build
WORK=$(mktemp -d)
cd "$WORK"
export OMP_NUM_THREADS=1
step() { echo "--- hybridrnn $*"; }
expect_extra() {   # a command that needs an extra: exit 2 and a one-line error naming the extra
  local extra=$1; shift
  step "$@"
  set +e; out=$(hybridrnn "$@" 2>&1); code=$?; set -e
  echo "$out" | tail -2
  if [ "$code" -ne 2 ] || ! echo "$out" | grep -q "hybridrnn\[$extra\]" || echo "$out" | grep -q Traceback; then
    echo "FAILED: expected exit 2 naming the '$extra' extra, got exit $code"; exit 1
  fi
}
step --version; hybridrnn --version
step datasets; hybridrnn datasets > /dev/null
step config show; hybridrnn config show "$REPO/configs/quickstart.yaml" > /dev/null
step train; hybridrnn train "$REPO/configs/quickstart.yaml" --out run --set train.epochs=2 --progress none > /dev/null
step evaluate; hybridrnn evaluate run > /dev/null
step predict; hybridrnn predict run --input bundled:seattle_weather --output forecast.csv
step backtest; hybridrnn backtest run --input bundled:seattle_weather --output bt.csv --stride 30 > /dev/null
test -s bt.summary.csv
step compare; hybridrnn compare "$REPO/configs/quickstart.yaml" --models lstm:4,gru:4 --seeds 2 --out cmp \
  --set train.epochs=1 > /dev/null
test -s cmp/report.html
expect_extra onnx export run --output model.onnx
printf 'tune:\n  space:\n    train.lr: {low: 0.0001, high: 0.01, log: true}\n' > tune.yaml
cat "$REPO/configs/quickstart.yaml" >> tune.yaml
expect_extra tune tune tune.yaml --trials 1
SHAKESPEARE="$REPO/../shared/data/tinyshakespeare"
if [ -d "$SHAKESPEARE" ]; then
  head -c 20000 "$SHAKESPEARE"/input.txt > corpus.txt
  step train language_model
  hybridrnn train "$REPO/configs/language_model/tinyshakespeare.yaml" --out lm --set data.train="$WORK/corpus.txt" \
    --set model.encoder=lstm:16 --set train.epochs=1 --progress none > /dev/null
  step generate; hybridrnn generate lm --prompt "ROMEO:" --tokens 20
else
  echo "--- (no ../shared/data: the language-model commands are skipped)"
fi
echo "bare install: every command ran"
