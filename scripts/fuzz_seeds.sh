#!/usr/bin/env bash
# Seed corpus of fuzz/fuzz_targets/load_checkpoint.rs: each valid file of the pg1-tiny
# fixture behind its selector byte (0 config, 1 tokenizer, 2 shard index, 3 second
# shard, 4 image processor config).
set -euo pipefail
cd "$(dirname "$0")/.."
out=fuzz/corpus/load_checkpoint
mkdir -p "$out"
i=0
for f in config.json tokenizer.json model.safetensors.index.json model-00002-of-00002.safetensors preprocessor_config.json; do
  { printf "\\x$(printf %02x $i)"; cat "tests/fixtures/pg1-tiny/$f"; } >"$out/seed-$i"
  i=$((i + 1))
done
ls -l "$out"
