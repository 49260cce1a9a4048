#!/usr/bin/env bash
# The main job on a fresh machine: installs hybridrnn (CPU torch 2.13.0) into .venv, trains the quick-start
# forecaster (an LSTM and a GRU side by side, with attention) on the Seattle weather data bundled with the package,
# evaluates it against the naive, seasonal-naive and linear baselines on the test split, and writes a
# 7-day forecast with its dates. About 20 seconds on 2 CPU cores after the install.
#   bash scripts/demo.sh [RUN_DIR]      (default: runs/quickstart, or runs/quickstart-<time> if that exists)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
RUN=${1:-runs/quickstart}
if [ -e "$RUN" ]; then RUN="$RUN-$(date +%Y%m%d-%H%M%S)"; fi
hybridrnn train configs/quickstart.yaml --out "$RUN"
hybridrnn evaluate "$RUN" --split test
hybridrnn predict "$RUN" --input bundled:seattle_weather --output "$RUN/forecast.csv"
echo
echo "forecast for the 7 days after the data ends ($RUN/forecast.csv):"
cat "$RUN/forecast.csv"
echo
echo "plots: $RUN/forecast_vs_actual.png $RUN/error_by_step.png $RUN/attention.png $RUN/learning_curve.png"
