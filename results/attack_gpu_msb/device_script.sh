#!/bin/bash
# Session 18 device script: (A) kill-and-resume on the device, (B) MSB target 5 seeds NRE 7,500.
set -u
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
mkdir -p $OUT
{ nvidia-smi -L; python3 -c "import jax, flax, optax, orbax.checkpoint as o, chex; print(jax.__version__, jax.devices(), flax.__version__, optax.__version__, chex.__version__, getattr(o,'__version__','?'))"; pip list 2>/dev/null | grep -i -E "orbax|jax|tqdm|matplotlib"; } > $OUT/env.txt 2>&1
echo "env done $(el)s"
# --- A: kill -9 after some rounds, list, resume in the same command --------------
RD=/tmp/ckpt_run
CMD="python3 scripts/attack.py --config full --seeds 2 --nre-budget 4000 --failure-epochs 10 --n-eval 2000 --eval-every 4 --no-analysis --no-progress --run-dir $RD --out $OUT/ckpt_out"
$CMD > $OUT/ckpt_first.log 2>&1 &
PID=$!
for i in $(seq 1 150); do
  sleep 1
  n=$(cat $RD/metrics.jsonl 2>/dev/null | wc -l)
  if [ "$n" -ge 5 ]; then break; fi
done
sleep 0.5; kill -9 $PID; wait $PID 2>/dev/null
echo "killed after $n metric lines at $(el)s"
(cd $RD && find . -type f | sort | xargs ls -l) > $OUT/ckpt_listing_after_kill.txt 2>&1
cp $RD/ledger.jsonl $OUT/ledger_after_kill.jsonl 2>/dev/null
cp $RD/metrics.jsonl $OUT/metrics_after_kill.jsonl 2>/dev/null
timeout 150 $CMD > $OUT/ckpt_resume.log 2>&1; echo "resume rc=$? at $(el)s"
(cd $RD && find . -type f | sort | xargs ls -l) > $OUT/ckpt_listing_after_resume.txt 2>&1
cp $RD/ledger.jsonl $RD/metrics.jsonl $OUT/ 2>/dev/null
python3 - <<'PY' > $OUT/ckpt_check.txt 2>&1
import json, os, collections
from banel_jax.ledger import read_ledger
out = os.environ["OUT"]
full = read_ledger("/tmp/ckpt_run/ledger.jsonl")
first = read_ledger(out + "/ledger_after_kill.jsonl")
train = [r for r in full if r["kind"] == "train"]
per_seed = collections.Counter(r["seed"] for r in train)
calls = collections.Counter((r["call"], r["seed"]) for r in full)
print("ledger rows after kill", len(first), "after resume", len(full))
print("prefix identical:", full[:len(first)] == first)
print("train rows per seed", dict(per_seed), "(budget 4000 each)")
keys = collections.Counter((r["kind"], r["round"], r["seed"]) for r in train)
print("train (round, seed) groups", len(keys), "sizes", sorted(set(keys.values())))
print("corrupt_checkpoints exists:", os.path.exists("/tmp/ckpt_run/corrupt_checkpoints"))
PY
echo "A done $(el)s"; cat $OUT/ckpt_check.txt
# --- B: the MSB target, 5 seeds, NRE 7,500 --------------------------------------
timeout $(( 470 - $(el) )) python3 scripts/attack.py --config full --failure-epochs 100 --support-filter --no-leading-zeros --eval-every 3 --target-dir checkpoints/target_msb --calibration results/addition_calibration_msb.json --no-progress --run-dir /tmp/r_msb --out $OUT/attack_msb_s5 > $OUT/attack_msb_s5.log 2>&1
echo "B rc=$? at $(el)s"; cp /tmp/r_msb/metrics.jsonl $OUT/attack_msb_s5_metrics.jsonl 2>/dev/null
tail -5 $OUT/attack_msb_s5.log
# --- C: if time remains, the same at 30 failure epochs ----------------------------
left=$(( 520 - $(el) ))
if [ $left -gt 90 ]; then
  timeout $left python3 scripts/attack.py --config full --support-filter --no-leading-zeros --eval-every 3 --target-dir checkpoints/target_msb --calibration results/addition_calibration_msb.json --no-progress --no-analysis --run-dir /tmp/r_msb30 --out $OUT/attack_msb_s5_e30 > $OUT/attack_msb_s5_e30.log 2>&1
  echo "C rc=$? at $(el)s"; cp /tmp/r_msb30/metrics.jsonl $OUT/attack_msb_s5_e30_metrics.jsonl 2>/dev/null
fi
echo "all done $(el)s"
