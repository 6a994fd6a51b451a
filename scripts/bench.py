#!/usr/bin/env python3
"""Side-by-side benchmark: this crate's CLI against Hugging Face transformers on the same
checkpoint, image, prompt and number of new tokens, on this machine.

    cargo build --release --example paligemma
    python scripts/make_random_checkpoint.py --variant pg1-3b-224 --out /tmp/pg1-3b-224
    python scripts/bench.py --model /tmp/pg1-3b-224 [--tokens 32] [--write docs/benchmarks.md]

Each system runs in its own process under /usr/bin/time, which gives its peak RSS.
transformers runs with torch's thread count set to the number of cores; eos is
suppressed on both sides so every run generates exactly --tokens tokens.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "target" / "release" / "examples" / "paligemma"


def timed(cmd, env=None):
    """Run cmd under /usr/bin/time; return (stdout, peak RSS in GB)."""
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M", *cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    rss = [line for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    return proc.stdout, int(rss[-1].split()[1]) / 1024 / 1024


def ours(args):
    out, rss = timed([str(CLI), "generate", "--model", str(args.model), "--image", str(args.image),
                      "--prompt", args.prompt, "--max-new-tokens", str(args.tokens), "--ignore-eos", "--json"])
    r = json.loads(out.strip().splitlines()[-1])
    t = r["timings"]
    return {"load_s": t["load_s"], "ttft_s": t["prefill_s"],
            "decode_ms": 1000 * t["decode_s"] / max(t["tokens"] - 1, 1), "rss_gb": rss,
            "prompt_tokens": len(r["prompt_ids"]), "generated_ids": r["generated_ids"]}


def batch_throughput(args, sizes, count):
    """Images per second of `generate --batch` over `count` copies of the image and
    prompt, for each batch size."""
    import tempfile
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs.jsonl"
        jobs.write_text("".join(json.dumps({"image": str(args.image), "prompt": args.prompt}) + "\n"
                                for _ in range(count)))
        for size in sizes:
            proc = subprocess.run([str(CLI), "generate", "--model", str(args.model), "--batch", str(jobs),
                                   "--batch-size", str(size), "--max-new-tokens", str(args.tokens),
                                   "--ignore-eos", "--json"], check=True, capture_output=True, text=True)
            # The CLI times the batches themselves, after loading: "N images in Xs (Y images/s)".
            rate = [line for line in proc.stderr.splitlines() if "images/s" in line][-1]
            rows.append((size, float(rate.rsplit("(", 1)[1].split()[0])))
    return rows


def hf_worker(args):
    """Runs inside the child process: load, one-token run, full run."""
    import torch
    from PIL import Image
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    torch.set_num_threads(os.cpu_count() or 1)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    model = PaliGemmaForConditionalGeneration.from_pretrained(args.model, dtype=dtype).eval()
    processor = PaliGemmaProcessor.from_pretrained(args.model)
    load_s = time.perf_counter() - t0
    inputs = processor(text=args.prompt, images=Image.open(args.image), return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    kw = dict(do_sample=False, suppress_tokens=[model.config.eos_token_id])
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1, **kw)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=args.tokens, min_new_tokens=args.tokens, **kw)
        full = time.perf_counter() - t0
    ids = out[0, inputs["input_ids"].shape[1]:].tolist()
    print(json.dumps({"load_s": load_s, "ttft_s": ttft, "decode_ms": 1000 * (full - ttft) / (args.tokens - 1),
                      "prompt_tokens": inputs["input_ids"].shape[1], "generated_ids": ids}))


def hf(args, dtype):
    cmd = [sys.executable, __file__, "--hf-worker", "--dtype", dtype, "--model", str(args.model),
           "--image", str(args.image), "--prompt", args.prompt, "--tokens", str(args.tokens)]
    out, rss = timed(cmd)
    r = json.loads(out.strip().splitlines()[-1])
    r["rss_gb"] = rss
    return r


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--image", type=Path, default=ROOT / "tests/fixtures/images/photo.png")
    ap.add_argument("--prompt", default="caption en")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--hf-worker", action="store_true")
    ap.add_argument("--write", type=Path)
    ap.add_argument("--batch-sizes", help="comma-separated batch sizes: measure batch throughput instead")
    ap.add_argument("--batch-images", type=int, default=4)
    args = ap.parse_args()
    if args.hf_worker:
        return hf_worker(args)
    if not CLI.exists():
        sys.exit("build the CLI first: cargo build --release --example paligemma")
    if args.batch_sizes:
        sizes = [int(x) for x in args.batch_sizes.split(",")]
        rows = batch_throughput(args, sizes, args.batch_images)
        base = rows[0][1]
        table = ["| batch size | images/s | vs batch size " + str(sizes[0]) + " |", "|---|---|---|"]
        table += [f"| {size} | {ips:.4f} | {ips / base:.2f}x |" for size, ips in rows]
        print(f"{args.batch_images} images of `{args.image.name}`, prompt {args.prompt!r}, {args.tokens} new tokens, "
              f"checkpoint `{args.model.name}`, {cpu_name()}, {os.cpu_count()} cores\n")
        print("\n".join(table))
        return
    import torch
    import transformers

    results = {"ours (f32)": ours(args), "transformers float32": hf(args, "float32"),
               "transformers bfloat16": hf(args, "bfloat16")}
    base32, base16 = results["transformers float32"], results["transformers bfloat16"]
    keys = [("load_s", "load s"), ("ttft_s", "time to first token s"), ("decode_ms", "decode ms/token"),
            ("rss_gb", "peak RSS GB")]
    lines = [f"| | {' | '.join(label for _, label in keys)} |", "|---" * (len(keys) + 1) + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.3g}" for k, _ in keys) + " |")
    ours_r = results["ours (f32)"]
    lines.append("| **ours / transformers f32** | " + " | ".join(f"**{ours_r[k] / base32[k]:.2f}**" for k, _ in keys) + " |")
    lines.append("| ours / transformers bf16 | " + " | ".join(f"{ours_r[k] / base16[k]:.2f}" for k, _ in keys) + " |")
    table = "\n".join(lines)
    same = ours_r["generated_ids"] == base32["generated_ids"]
    header = (f"Machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, transformers "
              f"{transformers.__version__}, torch threads = {os.cpu_count()}.\n"
              f"Checkpoint `{args.model.name}`, prompt {args.prompt!r} ({ours_r['prompt_tokens']} prompt tokens), "
              f"{args.tokens} new tokens, image `{args.image.name}`. "
              f"Greedy tokens identical to transformers f32: {same}.\n")
    print(header)
    print(table)
    if args.write:
        text = args.write.read_text() if args.write.exists() else ""
        marker = f"<!-- bench:{args.model.name} -->"
        block = f"{marker}\n{header}\n{table}\n{marker}"
        if marker in text:
            start = text.index(marker)
            end = text.index(marker, start + len(marker)) + len(marker)
            text = text[:start] + block + text[end:]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        args.write.write_text(text)


if __name__ == "__main__":
    main()
