#!/usr/bin/env python3
"""Fine-tuning step time and peak RSS, this crate's CLI against transformers + peft on
the same checkpoint, example, method and optimiser (AdamW), float32 on both sides.

    cargo build --release --example paligemma
    python scripts/make_random_checkpoint.py --variant pg1-3b-224 --out /tmp/pg1-3b-224
    python scripts/bench_train.py --model /tmp/pg1-3b-224 [--steps 3] [--write docs/benchmarks.md]

One example (the fixture photo, prompt "caption en", a 16-token suffix), batch 1.
Methods: LoRA r = 8, alpha 16 on the decoder's q/k/v/o/gate/up/down; attention-only
(the decoder's q/k/v/o). Each side runs in its own process; the first step is
reported apart (it includes one-time work), the rest averaged.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CLI, ROOT, Failed, cpu_name, timed, warm_page_cache, write_block  # noqa: E402

SUFFIX = "a photo of a red circle and a blue square on a white wooden table"
PREFIX = "caption en"
TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def ours(args, method):
    warm_page_cache(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text(json.dumps({"image": str(args.image), "prefix": PREFIX, "suffix": SUFFIX}) + "\n")
        cmd = [str(args.cli), "finetune", "--model", str(args.model), "--data", str(data),
               "--out", str(Path(tmp) / "out"), "--method", method, "--lora-rank", "8", "--lora-alpha", "16",
               "--optimizer", "adamw", "--lr", "1e-4", "--steps", str(args.steps), "--no-shuffle", "--json"]
        out, rss = timed(cmd)
    steps = [json.loads(line) for line in out.splitlines() if line.startswith('{"step"')]
    return {"first_s": steps[0]["seconds"], "step_s": sum(s["seconds"] for s in steps[1:]) / max(len(steps) - 1, 1),
            "rss_gb": rss, "losses": [s["loss"] for s in steps]}


def worker(args):
    import torch
    from PIL import Image
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    torch.set_num_threads(os.cpu_count() or 1)
    model = PaliGemmaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
    processor = PaliGemmaProcessor.from_pretrained(args.model)
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS))
    else:
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("model.language_model.") and any(
                f"self_attn.{x}_proj." in n for x in "qkvo"))
    model.train()
    inputs = processor(text=PREFIX, images=Image.open(args.image), suffix=SUFFIX, return_tensors="pt")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    print(json.dumps({"first_s": times[0], "step_s": sum(times[1:]) / max(len(times) - 1, 1), "losses": losses}))


def theirs(args, method):
    warm_page_cache(args.model)
    out, rss = timed([sys.executable, __file__, "--worker", "--method", method, "--model", str(args.model),
                      "--image", str(args.image), "--steps", str(args.steps)])
    r = json.loads(out.strip().splitlines()[-1])
    r["rss_gb"] = rss
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--image", type=Path, default=ROOT / "tests/fixtures/images/photo.png")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--methods", default="lora,attention")
    ap.add_argument("--cli", type=Path, default=CLI)
    ap.add_argument("--write", type=Path)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--method", default="lora")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    import torch
    import transformers
    import peft
    lines = ["| method | system | first step s | step s | peak RSS GB |", "|---|---|---|---|---|"]
    for method in args.methods.split(","):
        try:
            a, b = ours(args, method), theirs(args, method)
        except Failed as e:
            sys.exit(str(e))
        lines.append(f"| {method} | ours (f32) | {a['first_s']:.3g} | {a['step_s']:.3g} | {a['rss_gb']:.3g} |")
        lines.append(f"| {method} | transformers + peft (float32) | {b['first_s']:.3g} | {b['step_s']:.3g} | "
                     f"{b['rss_gb']:.3g} |")
        lines.append(f"| {method} | **ours / theirs** | {a['first_s'] / b['first_s']:.2f} | "
                     f"**{a['step_s'] / b['step_s']:.2f}** | **{a['rss_gb'] / b['rss_gb']:.2f}** |")
        print(method, "losses ours", a["losses"], "theirs", b["losses"], file=sys.stderr)
    header = (f"Machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, transformers "
              f"{transformers.__version__}, peft {peft.__version__}. Checkpoint `{args.model.name}`, batch 1, "
              f"prompt {PREFIX!r}, suffix {SUFFIX!r}, AdamW lr 1e-4, {args.steps} steps.\n")
    print(header)
    print("\n".join(lines))
    if args.write:
        write_block(args.write, f"<!-- train:{args.model.name} -->", header + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
