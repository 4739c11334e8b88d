#!/usr/bin/env bash
# Fashion-MNIST, full ladder at 100 labels: the denoising weights and noise chosen on a
# validation split (10,000 training images held out), never on the test set. A 2 x 2 grid
# (noise std 0.3 as in the paper, or 0.15; the paper's denoising weights, or a tenth of
# them), seeds 0 and 1 as replicas, on a short schedule (10 epochs of 500 steps, evaluated
# every 5 epochs and at the end). Each candidate is a sweep of its own under GRID_DIR
# (default runs/fashion_validation_grid); re-running resumes them. Then
# experiments.choose_on_validation writes GRID_DIR/choice.md: each candidate's final
# validation error and the one chosen.
#
#   bash scripts/fashion_validation_grid.sh            # python: the venv's, else python3
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
grid="${GRID_DIR:-runs/fashion_validation_grid}"
mkdir -p "$grid"
paper_weights="1000,10,0.1,0.1,0.1,0.1,0.1"
tenth_weights="100,1,0.01,0.01,0.01,0.01,0.01"
dirs=()
for noise in 0.3 0.15; do
  for weights in paper tenth; do
    name="noise${noise}_weights_${weights}"
    [ "$weights" = paper ] && lambdas="$paper_weights" || lambdas="$tenth_weights"
    "$python" -m experiments.label_sweep --dataset=fashion_mnist --presets=full \
      --num_labels=100 --seeds=0,1 --num_validation=10000 --epochs=10 --eval_every=5 \
      --noise_std="$noise" --denoise_weights="$lambdas" --sweep_dir="$grid/$name"
    dirs+=("$grid/$name")
  done
done
"$python" -m experiments.choose_on_validation --dirs="$(IFS=,; echo "${dirs[*]}")" \
  --output="$grid/choice.md"
