#!/usr/bin/env bash
# Ablations of the general-purpose learned optimizer (configs/family/general.yaml, optimizer=celo): each
# variant changes one thing in the shipped recipe and meta-trains for the same number of meta-steps
# (STEPS, default 300) from the same seed; then one evaluation puts every variant's best.pt on the
# generalization suite (configs/generalization.yaml) beside the hand-crafted baselines (the shipped learned
# optimizers left out), reusing the baselines' cells from BASE if given.
#
#   LEARNED_OPT_DATA=/path/to/data bash experiments/generalization_ablations.sh [OUT=runs/ablations] [BASE=runs/generalization/<run>]
set -euo pipefail
OUT=${1:-runs/ablations}
BASE=${2:-}
STEPS=${STEPS:-300}
COMMON="--config-name recipe/celo_general progress=false meta.steps=$STEPS"   # configs/recipe/celo_general.yaml
declare -A VARIANTS=(
  [main]=""
  [no_output_norm]="optimizer.output_norm=false"
  [no_augmentation]="family.augment=false"
  [narrow_tasks]="family.datasets=[digits] family.architectures=[mlp] family.activations=[relu] family.widths=[32,32] family.depths=[1,1] family.batch_sizes=[128,128]"
  [truncated_es]="meta.estimator=es es.pairs=2 es.std=0.01"
  [truncated_bptt]="meta.estimator=bptt"
  [one_meta_step]="meta.steps=1 validation.every=1"   # about the untrained rule (a normalised Adam step)
)
EVAL=()
for name in main no_output_norm no_augmentation narrow_tasks truncated_es truncated_bptt one_meta_step; do
  dir=$OUT/$name
  if [ -f "$dir/summary.json" ]; then echo "$name: done"; 
  elif [ -f "$dir/checkpoint.pt" ]; then python experiments/meta_train.py --resume "$dir";
  else python experiments/meta_train.py $COMMON ${VARIANTS[$name]} hydra.run.dir="$dir"; fi
  EVAL+=("+optimizers.celo_$name.checkpoint=$dir/best.pt")
done
mkdir -p "$OUT/evaluation"
if [ -n "$BASE" ] && [ ! -f "$OUT/evaluation/config.json" ]; then cp -rn "$BASE/cells" "$BASE/tuning" "$OUT/evaluation/"; fi
# the learned optimizers of the suite's config (entries with a checkpoint), left out of this evaluation
SHIPPED=($(python - <<'PY'
import os
from hydra import compose, initialize_config_dir
with initialize_config_dir(config_dir=os.path.abspath("configs"), version_base="1.3"):
    print(" ".join(k for k, v in compose("generalization").optimizers.items() if "checkpoint" in v))
PY
))
python experiments/evaluate.py --config-name generalization progress=false hydra.run.dir="$OUT/evaluation" "${EVAL[@]}" \
  "${SHIPPED[@]/#/\~optimizers.}" \
  $( [ -f "$OUT/evaluation/config.json" ] && echo resume=true )
