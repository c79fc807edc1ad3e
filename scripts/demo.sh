#!/usr/bin/env bash
# The demo behind `make demo`: corpus → tokenizer → tokenized splits → 2-process FSDP2 training → plot → sample →
# evaluate (loss and bits per byte on the held-out test split, accuracy on the code-line task).
# It also byte-tokenizes train and val, the inputs of config_files/tiny_cpu.yaml (the commands atop that file).
# Each data step is skipped when its output exists; delete data/demo to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
NPROC=${NPROC:-2}
DATA=data/demo
EXPERIMENT=experiments/demo_cpu

[ -f "$DATA/train.jsonl" ] || llm_gym data demo_corpus --output_dir "$DATA"
[ -f "$DATA/tokenizer.json" ] || llm_gym data train_tokenizer --input "$DATA/train.jsonl" --vocab_size 4096 \
  --output_path "$DATA/tokenizer.json"
for split in train val test; do
  [ -f "$DATA/${split}_bpe.idx" ] || llm_gym data tokenize --input "$DATA/$split.jsonl" \
    --tokenizer "$DATA/tokenizer.json" --output_prefix "$DATA/${split}_bpe"
done
for split in train val; do
  [ -f "$DATA/${split}_byte.idx" ] || llm_gym data tokenize --input "$DATA/$split.jsonl" \
    --tokenizer byte --output_prefix "$DATA/${split}_byte"
done

rm -rf "$EXPERIMENT"  # each demo is a fresh run
torchrun --standalone --nproc_per_node "$NPROC" src/llm_gym/__main__.py run \
  --config_file_path config_files/demo_cpu.yaml "$@"
llm_gym plot --metrics_path "$EXPERIMENT/metrics.jsonl" --output_path "$EXPERIMENT/curves.png"
echo "loss curves: $EXPERIMENT/curves.png"
llm_gym generate --checkpoint_path "$EXPERIMENT/checkpoints" --prompt "def " --max_new_tokens 200 \
  --temperature 0.8 --top_k 50 --seed 0
llm_gym evaluate --checkpoint_path "$EXPERIMENT" --prefix val --prefix "$DATA/test_bpe" \
  --tasks "code_lines:$DATA/test.jsonl"
