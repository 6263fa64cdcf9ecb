#!/bin/bash
# Train yolo_voc on 2 nodes x 4 GPUs with SLURM:  sbatch examples/slurm_train.sh
#
# srun starts one task per GPU, and Lightning reads the job's layout from SLURM's environment (SLURM_NTASKS,
# SLURM_PROCID, SLURM_LOCALID, the node list): --trainer.num_nodes must equal --nodes, and --trainer.devices must equal
# --ntasks-per-node and the GPUs per node. Everything below SHARED must be on storage that every node sees at the same
# path: the project folder (run folders), the dataset, the pretrained weights (see the README, "Training on several GPUs
# and nodes"). Submitting the script again resumes the run from its last checkpoint (--name and --ckpt_path last).
#SBATCH --job-name=yolo_voc
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail
SHARED=${SHARED:-$HOME/yolo_voc_shared}  # holds data/, darknet53.conv.74 and runs/
NODES=$SLURM_JOB_NUM_NODES
GPUS_PER_NODE=$SLURM_NTASKS_PER_NODE
cd "$SHARED"

# --kill-on-bad-exit: a task that fails stops the others at once instead of leaving them waiting for it
srun --kill-on-bad-exit=1 yolo-voc fit \
    --trainer.num_nodes "$NODES" --trainer.devices "$GPUS_PER_NODE" --trainer.strategy ddp \
    --data.root "$SHARED/data" --data.train_split 2007-trainval+2012-trainval --data.val_split 2007-test \
    --data.num_workers $((SLURM_CPUS_PER_TASK - 1)) \
    --model.pretrained "$SHARED/darknet53.conv.74" \
    --project "$SHARED/runs/yolo_voc" --name voc0712 --ckpt_path last
