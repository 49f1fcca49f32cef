#!/bin/bash
# A Slurm job array that runs one experiment in N shards, then merges them.
#
#   sbatch --array=0-15 configs/slurm/sweep.sh configs/experiments/MY.toml        # the shards
#   sbatch --dependency=afterok:JOBID configs/slurm/sweep.sh --merge configs/experiments/MY.toml
#
# Each array task runs `flashsim run --shard I/N` (points whose index is I mod N) into
# results/<name>/shards/I-of-N/ on the shared file system; a task that is killed or preempted
# resumes where it stopped when requeued (finished points are in its points.jsonl). The merge
# writes results/<name>/results.csv (byte-identical to an unsharded run), .parquet, pareto.csv.
#SBATCH --job-name=flashsim
#SBATCH --cpus-per-task=4
#SBATCH --mem=4G
#SBATCH --time=02:00:00
#SBATCH --requeue
#SBATCH --output=results/slurm-%A_%a.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
FLASHSIM="${FLASHSIM:-target/release/flashsim}"
[ -x "$FLASHSIM" ] || cargo build --release
if [ "${1:-}" = "--merge" ]; then
    exec "$FLASHSIM" merge "$2" --out-dir results
fi
EXPERIMENT="$1"
N="${SLURM_ARRAY_TASK_COUNT:?submit with --array=0-(N-1)}"
I="${SLURM_ARRAY_TASK_ID:?submit with --array}"
exec "$FLASHSIM" run "$EXPERIMENT" --shard "$I/$N" --threads "${SLURM_CPUS_PER_TASK:-1}" --quiet --out-dir results
