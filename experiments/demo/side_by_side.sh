#!/bin/bash
# make demo's command with empty caches, at BASE (a commit, checked out in a worktree) and at this checkout, in
# turns: base, new, base2, new2; logs in logs/demo_side_ARM.log, then per arm:
#   python experiments/demo/time_demo.py logs/demo_side_ARM.log experiments/demo/results/demo_side_ARM.json "..." --commit C --command "..."
#   experiments/demo/side_by_side.sh 7370434
set -e
base=${1:?usage: side_by_side.sh BASE_COMMIT}
cd "$(dirname "$0")/../.."
root=$PWD
git worktree add -f "/tmp/base-$base" "$base" >/dev/null 2>&1 || true
mkdir -p logs
for arm in base new base2 new2; do
  case $arm in base*) dir=/tmp/base-$base;; *) dir=$root;; esac
  (cd "$dir" && export INTERNALIZE_CACHE=$(mktemp -d) PYTHONPATH=$dir/src &&
   /usr/bin/time -v "$root/.venv/bin/internalize" distill examples/over.yaml --overwrite train.min_steps=0 \
     train.validation=0) > "logs/demo_side_$arm.log" 2>&1
  echo "$arm done $(date +%T)"
done
