#!/usr/bin/env python3
"""How far transformers itself drifts from its float32 logits when it runs the tiny
fixture checkpoints in float16 and bfloat16: the yardstick for our half-precision
tolerances (docs/precision.md). Writes tests/fixtures/expected/precision.json.

Run after scripts/make_fixtures.py, with the same venv:
    ~/.venvs/ref/bin/python scripts/make_precision_fixtures.py
"""

import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from transformers import PaliGemmaForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
EXPECTED = ROOT / "expected"
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


def main():
    torch.manual_seed(0)
    out = {"transformers": transformers.__version__, "torch": torch.__version__,
           "attn_implementation": "eager", "device": "cpu", "models": {}}
    for name in ["pg1-tiny", "pg2-tiny"]:
        meta = json.loads((EXPECTED / f"{name}.json").read_text())
        ref = load_file(EXPECTED / f"{name}.safetensors")
        per_dtype = {}
        for label, dtype in DTYPES.items():
            model = PaliGemmaForConditionalGeneration.from_pretrained(
                ROOT / name, dtype=dtype, attn_implementation="eager").eval()
            cases = {}
            for case, c in meta["cases"].items():
                ids = torch.tensor([c["prompt_ids"]])
                inputs = {
                    "input_ids": ids,
                    "attention_mask": torch.ones_like(ids),
                    "token_type_ids": torch.tensor([c["token_type_ids"]]),
                    "pixel_values": ref[f"{case}.pixel_values"].to(dtype),
                }
                with torch.no_grad():
                    logits = model(**inputs).logits[0].float()
                    gen = model.generate(**inputs, max_new_tokens=meta["max_new_tokens"],
                                         do_sample=False)
                f32 = ref[f"{case}.logits"]
                generated = gen[0, ids.shape[1]:].tolist()
                agree = 0
                for a, b in zip(generated, c["generated_ids"]):
                    if a != b:
                        break
                    agree += 1
                cases[case] = {
                    "logits_max_abs_diff_vs_f32": (logits - f32).abs().max().item(),
                    "f32_logits_max_abs": f32.abs().max().item(),
                    "generated_ids": generated,
                    "greedy_prefix_agreeing_with_f32": agree,
                }
            per_dtype[label] = {
                "max_abs_diff_vs_f32": max(v["logits_max_abs_diff_vs_f32"] for v in cases.values()),
                "cases": cases,
            }
            print(name, label, per_dtype[label]["max_abs_diff_vs_f32"],
                  {k: v["greedy_prefix_agreeing_with_f32"] for k, v in cases.items()})
        out["models"][name] = per_dtype
    (EXPECTED / "precision.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
