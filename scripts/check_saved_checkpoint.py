#!/usr/bin/env python3
"""Check that a checkpoint directory written by this crate (`paligemma finetune --out
DIR`, `Model::save_pretrained`) loads in transformers and computes what this crate
computes: the prefill logits of a prompt (max abs difference) and the greedy tokens.
When DIR has a LoRA adapter (`DIR/adapter`, from `finetune --method lora`), peft's
`PeftModel.from_pretrained(base, DIR/adapter)` must compute the same as well.

    cargo build --release --example paligemma
    python scripts/check_saved_checkpoint.py --model DIR [--image IMG] [--prompt "caption en"]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image
from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--image", type=Path, default=ROOT / "tests/fixtures/images/photo.png")
    ap.add_argument("--prompt", default="caption en")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--cli", type=Path, default=ROOT / "target/release/examples/paligemma")
    ap.add_argument("--base", type=Path, help="the base checkpoint of DIR/adapter (default: from its config)")
    args = ap.parse_args()

    out = subprocess.run([str(args.cli), "generate", "--model", str(args.model), "--image", str(args.image),
                          "--prompt", args.prompt, "--max-new-tokens", str(args.tokens), "--top-logits", "5",
                          "--json"], check=True, capture_output=True, text=True).stdout
    ours = json.loads(out.strip().splitlines()[-1])

    processor = PaliGemmaProcessor.from_pretrained(args.model, backend="pil")
    inputs = processor(text=args.prompt, images=Image.open(args.image), return_tensors="pt")

    def compare(model, label):
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=args.tokens, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        theirs = gen.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        first = gen.logits[0][0].float()
        diff = max(abs(float(first[i]) - v) for i, v in ours["top_logits"][0])
        same = ours["generated_ids"] == theirs
        print(json.dumps({"model": str(args.model), "reference": label, "same_greedy_ids": same,
                          "ours": ours["generated_ids"], "theirs": theirs,
                          "first_step_top5_logit_max_abs_diff": diff}))
        return same and diff < 1e-4

    load = dict(dtype=torch.float32, attn_implementation="eager")
    ok = compare(PaliGemmaForConditionalGeneration.from_pretrained(args.model, **load).eval(),
                 "transformers on DIR")
    adapter = args.model / "adapter"
    if adapter.is_dir():
        from peft import PeftModel
        base = args.base or Path(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"])
        peft_model = PeftModel.from_pretrained(PaliGemmaForConditionalGeneration.from_pretrained(base, **load),
                                               adapter).eval()
        ok = compare(peft_model, f"peft: {base} + DIR/adapter") and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
