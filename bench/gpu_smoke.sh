#!/usr/bin/env bash
# The GPU checks of docs/gpu.md in one command (run from the repository root on a CUDA machine
# whose Python has torch; the other packages may come as wheels in .whl/, the corpora in
# $SEQ2SEQ_DATA). Short bf16 trainings of both SAMSum recipes with decoding and ROUGE of the
# test split, an fp16 (gradient scaler) Multi30k run, and a one-process torchrun with NCCL.
# Each step's log goes to $OUT (default /tmp/gpu_out).
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
MINUTES=${MINUTES:-2}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 SEQ2SEQ_CACHE=/tmp/cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
T=$SEQ2SEQ_DATA/samsum/test.jsonl
for recipe in samsum_pointer_generator samsum_transformer; do
  run=/tmp/$recipe
  { time python3 -m seq2seq.train recipe=$recipe trainer.precision=bf16 trainer.max_minutes=$MINUTES \
      trainer.valid_every=100000 trainer.log_every=100 trainer.progress=false run_dir=$run ; } > "$OUT/$recipe.train.log" 2>&1
  { time python3 -m seq2seq.decode run=$run input=$T input_field=dialogue output=$OUT/$recipe.test.txt ; } \
      > "$OUT/$recipe.decode.log" 2>&1
  python3 -m seq2seq.score hyp=$OUT/$recipe.test.txt ref=$T ref_field=summary metrics=[rouge] > "$OUT/$recipe.rouge.txt" 2>&1
  tail -4 "$OUT/$recipe.train.log"; cat "$OUT/$recipe.rouge.txt"
done
{ time python3 -m seq2seq.train recipe=multi30k_en_de_transformer trainer.precision=fp16 trainer.max_steps=300 \
    trainer.valid_every=300 trainer.log_every=50 trainer.progress=false run_dir=/tmp/m30k_fp16 ; } > "$OUT/m30k_fp16.log" 2>&1
tail -4 "$OUT/m30k_fp16.log"
{ time torchrun --standalone --nproc_per_node=1 -m seq2seq.train recipe=multi30k_en_de_transformer \
    trainer.max_steps=50 trainer.valid_every=50 trainer.log_every=10 trainer.progress=false run_dir=/tmp/m30k_nccl ; } \
    > "$OUT/m30k_nccl.log" 2>&1
grep -i "distributed\|backend\|done" "$OUT/m30k_nccl.log" | tail -3
