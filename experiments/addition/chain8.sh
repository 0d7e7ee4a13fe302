#!/usr/bin/env bash
# The 1-8 digit rerun's chain (issue 18; EXPERIMENTS.md 5.1): every stage that needs the scratch-pad teacher, in
# order, each result committed to git as it lands, because no weights outlive a session on the 2-core machines
# here and git does. About 2.5 hours to the full student's evaluation (teacher ~90 min, full student ~57 min,
# evaluation ~15 min), then baseline 1 and the teacher's own evaluation (~1 hour). Start it first, alone (one
# torch process at a time), from the repo root after `make setup`:
#   nohup experiments/addition/chain8.sh > logs/chain8.log 2>&1 &
# It writes a line per stage to logs/chain8.status; a stage that fails stops the chain. Records are written under
# new names (*_chain), so the committed records of earlier runs stay as they were run. A stage whose result is
# already committed is skipped (the full student once `results/addition8.json` holds it), so a later session
# reruns only the teacher and what is left; name that teacher's record anew: TEACHER=addition_teacher8_chain2.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p logs runs
status() { echo "$1 $(date -u +%FT%TZ)" >> logs/chain8.status; }
land() {  # commit only these paths (nothing else staged goes with them)
    local msg="$1"; shift
    git add -- "$@" && git commit -q -m "$msg" -- "$@" || echo "commit failed: $msg" >> logs/chain8.status
}
R=experiments/addition/results
T=${TEACHER:-addition_teacher8_chain}
has() { python -c "import json,sys; sys.exit(0 if sys.argv[2] in json.load(open(sys.argv[1]))['models'] else 1)" "$R/addition8.json" "$1"; }
status start

# 1. The scratch-pad teacher: SmolLM2 fully fine-tuned on 3,200 worked scratch-pads (400 updates). The evaluation
#    engine changes no answer (tests/test_engine.py), only the time of its dev scoring.
if [ ! -d "runs/$T/model" ] && ! { has student && has direct_finetune; }; then  # nothing left needs it: no retraining
    python experiments/run.py addition "$T" experiments/addition/teacher8.yaml eval.engine=static
    land "1-8 digit chain: scratch-pad teacher record" "$R/$T.json" "experiments/addition/runs/$T"
fi
status teacher

# 2. The full student on 4,000 inputs, its teacher scoring both committed scratch-pad files (inputs 1-2,000 by the
#    first teacher, 2,001-4,000 by the retrained one) instead of generating.
if ! has student; then
    cat experiments/addition/data8/teacher_scratchpads.jsonl experiments/addition/data8/teacher_scratchpads_2001_4000.jsonl \
        > runs/teacher_scratchpads8_all.jsonl
    python experiments/run.py addition addition_student8_chain experiments/addition/distill8.yaml \
        model.name="runs/$T/model" teacher.generations_file=runs/teacher_scratchpads8_all.jsonl
    land "1-8 digit chain: full student record" $R/addition_student8_chain.json experiments/addition/runs/addition_student8_chain
    status student

    # 3. Its evaluation: 8 digits first (the figure the cut-off run never reached), then every length into addition8.
    python -m experiments.addition.evaluate --digits 8 --data experiments/addition/data8 --out addition8_student_8digits \
        --engine static student=runs/addition_student8_chain/model
    land "1-8 digit chain: full student at 8 digits" $R/addition8_student_8digits.json $R/addition8_student_8digits.png
    status eval_student_8
    python -m experiments.addition.evaluate --digits 1 2 3 4 5 6 7 8 --data experiments/addition/data8 --out addition8 \
        --engine static --add student=runs/addition_student8_chain/model
    land "1-8 digit chain: full student, every length" $R/addition8.json $R/addition8.png
    status eval_student
fi

# 4. Baseline 1 (the scratch-pad model fine-tuned on the gold direct answers of the same 4,000 problems), then its
#    evaluation with the teacher's own scratch-pad accuracy on 100 unseen problems per length.
if ! has direct_finetune; then
    python experiments/run.py addition addition_direct_finetune8_chain experiments/addition/direct_finetune8.yaml \
        model.name="runs/$T/model"
    land "1-8 digit chain: baseline 1 record" $R/addition_direct_finetune8_chain.json experiments/addition/runs/addition_direct_finetune8_chain
    status direct
    python -m experiments.addition.evaluate --digits 1 2 3 4 5 6 7 8 --data experiments/addition/data8 --out addition8 \
        --engine static --add --scratchpad teacher_chain --scratchpad-per-length 100 --fewer teacher_chain=200 \
        teacher_chain="runs/$T/model" direct_finetune=runs/addition_direct_finetune8_chain/model
    land "1-8 digit chain: baseline 1 and the teacher's scratch-pads, every length" $R/addition8.json $R/addition8.png
fi
status done
