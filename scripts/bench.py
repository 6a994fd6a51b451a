#!/usr/bin/env python3
"""Side-by-side benchmark: this crate's CLI against Hugging Face transformers on the same
checkpoint, image, prompt and number of new tokens, on this machine.

    cargo build --release --example paligemma
    python scripts/make_random_checkpoint.py --variant pg1-3b-224 --out /tmp/pg1-3b-224
    python scripts/bench.py --model /tmp/pg1-3b-224 [--tokens 32] [--write docs/benchmarks.md]

Each system runs in its own process, after the weight files were read once (a warm
page cache for every run); its peak RSS comes from wait4(2).
transformers runs with torch's thread count set to the number of cores; eos is
suppressed on both sides so every run generates exactly --tokens tokens.

    python scripts/bench.py --model DIR --gpu [--cli PATH]

times the CLI on cuda (f32, f16, bf16) and wgpu (f32, f16) against transformers on
cuda (float32, bfloat16), each after one warm-up generation (GPU kernels compile and
tune on first use); scripts/gpu_check.sh runs it.
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


class Failed(Exception):
    pass


def timed(cmd, timeout=None):
    """Run cmd; return (stdout, peak RSS in GB). Raises Failed on a non-zero exit or
    after `timeout` seconds."""
    import tempfile
    import threading
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        # wait4 rather than Popen.wait: it also returns the child's peak RSS.
        _, status, usage = os.wait4(proc.pid, 0)
        if timer:
            timer.cancel()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise Failed(f"command failed ({code}): {' '.join(cmd)}\n{stderr[-3000:]}")
    return stdout, usage.ru_maxrss / 1024 / 1024


def warm_page_cache(model: Path):
    """Read every weight file once, so each system loads from the page cache rather
    than whichever ran first paying for the disk."""
    for f in sorted(model.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def ours_config(args, config):
    """Our CLI in one named configuration: a compute dtype (`f32`, `f16`, `bf16`) or
    `f32-weights` / `bf16-weights` / `int8-weights` (f32 activations, host weights), or
    `auto-weights` (the default: host weights in the checkpoint's precision on SIMD CPUs)."""
    if config.endswith("-weights"):
        return ours(args, dtype="f32", weights=config.removesuffix("-weights"))
    return ours(args, dtype=config)


def ours(args, device="cpu", dtype="f32", warmup=0, timeout=None, weights="backend"):
    warm_page_cache(args.model)
    out, rss = timed([str(args.cli), "--device", device, "--dtype", dtype, "--weights", weights,
                      "generate", "--model", str(args.model),
                      "--image", str(args.image), "--prompt", args.prompt, "--max-new-tokens", str(args.tokens),
                      "--ignore-eos", "--json", "--warmup", str(warmup)], timeout)
    r = json.loads(out.strip().splitlines()[-1])
    t = r["timings"]
    return {"load_s": t["load_s"], "ttft_s": t["prefill_s"],
            "decode_ms": 1000 * t["decode_s"] / max(t["tokens"] - 1, 1), "rss_gb": rss,
            "prompt_tokens": len(r["prompt_ids"]), "generated_ids": r["generated_ids"],
            "decode_elapsed_s": t.get("decode_elapsed_s", [])}


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
            proc = subprocess.run([str(args.cli), "generate", "--model", str(args.model), "--batch", str(jobs),
                                   "--batch-size", str(size), "--max-new-tokens", str(args.tokens),
                                   "--ignore-eos", "--json"], check=True, capture_output=True, text=True)
            # The CLI times the batches themselves, after loading: "N prompts (M images) in Xs
            # (Y prompts/s, Z images/s)"; one image per line here, so Y = Z.
            rate = [line for line in proc.stderr.splitlines() if "prompts/s" in line][-1]
            rows.append((size, float(rate.rsplit("(", 1)[1].split()[0])))
    return rows


def hf_worker(args):
    """Runs inside the child process: load, one-token run, full run."""
    import torch
    from PIL import Image
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    torch.set_num_threads(os.cpu_count() or 1)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    device = args.hf_device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    model = PaliGemmaForConditionalGeneration.from_pretrained(args.model, dtype=dtype).to(device).eval()
    processor = PaliGemmaProcessor.from_pretrained(args.model)
    sync()
    load_s = time.perf_counter() - t0
    inputs = processor(text=args.prompt, images=Image.open(args.image), return_tensors="pt").to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    kw = dict(do_sample=False, suppress_tokens=[model.config.eos_token_id])
    with torch.inference_mode():
        for _ in range(args.warmup):
            model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, **kw)
        sync()
        t0 = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1, **kw)
        sync()
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=args.tokens, min_new_tokens=args.tokens, **kw)
        sync()
        full = time.perf_counter() - t0
    ids = out[0, inputs["input_ids"].shape[1]:].tolist()
    print(json.dumps({"load_s": load_s, "ttft_s": ttft, "decode_ms": 1000 * (full - ttft) / (args.tokens - 1),
                      "prompt_tokens": inputs["input_ids"].shape[1], "generated_ids": ids}))


def hf(args, dtype, device="cpu", warmup=0, timeout=None):
    warm_page_cache(args.model)
    cmd = [sys.executable, __file__, "--hf-worker", "--dtype", dtype, "--model", str(args.model),
           "--image", str(args.image), "--prompt", args.prompt, "--tokens", str(args.tokens),
           "--hf-device", device, "--warmup", str(warmup)]
    out, rss = timed(cmd, timeout)
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
    ap.add_argument("--cli", type=Path, default=CLI, help="the paligemma example binary")
    ap.add_argument("--ours", default="f32,f32-weights,bf16-weights,int8-weights,f16",
                    help="our configurations to time, comma-separated: a compute dtype (f32, f16, bf16), "
                         "or bf16-weights / int8-weights (f32 activations, host bf16/int8 weight kernels), "
                         "or auto-weights (the default format)")
    ap.add_argument("--against", type=Path, metavar="OLD_CLI",
                    help="no transformers: time --cli against another build of the CLI (before/after a change), "
                         "interleaved, --repeats times each")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="time cuda and wgpu against transformers on cuda")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per run in --gpu mode")
    ap.add_argument("--isa", choices=["portable", "avx2", "avx512", "avx512bf16"],
                    help="cap both sides to one instruction set: PALIGEMMA_KERNELS for ours, "
                         "ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS (torch's "
                         "float32 matmul on Intel CPUs) for torch (portable: torch's default build, "
                         "SSE4.2 at most)")
    ap.add_argument("--hf-device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_worker:
        return hf_worker(args)
    if args.isa:
        # Children inherit these: every run of both systems is capped alike.
        os.environ["PALIGEMMA_KERNELS"] = args.isa
        aten, onednn, mkl = {"portable": ("default", "SSE41", "SSE4_2"), "avx2": ("avx2", "AVX2", "AVX2"),
                             "avx512": ("avx512", "AVX512_CORE", "AVX512"),
                             "avx512bf16": ("avx512", "AVX512_CORE_BF16", "AVX512")}[args.isa]
        os.environ["ATEN_CPU_CAPABILITY"] = aten
        os.environ["ONEDNN_MAX_CPU_ISA"] = onednn
        os.environ["MKL_ENABLE_INSTRUCTIONS"] = mkl
    if not args.cli.exists():
        sys.exit("build the CLI first: cargo build --release --example paligemma")
    if args.gpu:
        return gpu(args)
    if args.against:
        return against(args)
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

    dtypes = args.ours.split(",")
    try:
        results = {f"ours ({d})": ours_config(args, d) for d in dtypes}
        results["transformers float32"] = hf(args, "float32")
        results["transformers bfloat16"] = hf(args, "bfloat16")
    except Failed as e:
        sys.exit(str(e))
    base32, base16 = results["transformers float32"], results["transformers bfloat16"]
    keys = [("load_s", "load s"), ("ttft_s", "time to first token s"), ("decode_ms", "decode ms/token"),
            ("rss_gb", "peak RSS GB")]
    lines = [f"| | {' | '.join(label for _, label in keys)} |", "|---" * (len(keys) + 1) + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.3g}" for k, _ in keys) + " |")
    for d in dtypes:
        r = results[f"ours ({d})"]
        lines.append(f"| **ours {d} / transformers f32** | " + " | ".join(f"**{r[k] / base32[k]:.2f}**" for k, _ in keys) + " |")
        lines.append(f"| ours {d} / transformers bf16 | " + " | ".join(f"{r[k] / base16[k]:.2f}" for k, _ in keys) + " |")
    table = "\n".join(lines)
    ours_r = results[f"ours ({dtypes[0]})"]
    same = ", ".join(f"ours {d}: {results[f'ours ({d})']['generated_ids'] == base32['generated_ids']}" for d in dtypes)
    capped = (f" Instruction sets capped to {args.isa}: PALIGEMMA_KERNELS={args.isa}, ATEN_CPU_CAPABILITY="
              f"{os.environ['ATEN_CPU_CAPABILITY']}, ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']}, "
              f"MKL_ENABLE_INSTRUCTIONS={os.environ['MKL_ENABLE_INSTRUCTIONS']}."
              if args.isa else "")
    header = (f"Machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, transformers "
              f"{transformers.__version__}, torch threads = {os.cpu_count()}.{capped}\n"
              f"Checkpoint `{args.model.name}`, prompt {args.prompt!r} ({ours_r['prompt_tokens']} prompt tokens), "
              f"{args.tokens} new tokens, image `{args.image.name}`. "
              f"Greedy tokens identical to transformers f32: {same}.\n")
    print(header)
    print(table)
    if args.write:
        tag = f"{args.model.name}:{args.isa}" if args.isa else args.model.name
        write_block(args.write, f"<!-- bench:{tag} -->", f"{header}\n{table}\n")


def against(args):
    """Our CLI against another build of it on the same configurations, runs interleaved
    (old, new, old, new, ...) so drift in the machine hits both; the best of the repeats
    of each is reported, with new / old."""
    new_cli = args.cli
    keys = [("load_s", "load s"), ("ttft_s", "time to first token s"), ("decode_ms", "decode ms/token"),
            ("rss_gb", "peak RSS GB")]
    lines = [f"| configuration | build | {' | '.join(label for _, label in keys)} | runs (TTFT s / decode ms) |",
             "|---" * (len(keys) + 3) + "|"]
    for config in args.ours.split(","):
        runs = {"before": [], "after": []}
        for _ in range(args.repeats):
            for name, cli in (("before", args.against), ("after", new_cli)):
                args.cli = cli
                try:
                    runs[name].append(ours_config(args, config))
                except Failed as e:
                    sys.exit(str(e))
        args.cli = new_cli
        best = {name: {k: min(r[k] for r in rs) for k, _ in keys} for name, rs in runs.items()}
        same = runs["before"][0]["generated_ids"] == runs["after"][0]["generated_ids"]
        for name in ("before", "after"):
            detail = ", ".join(f"{r['ttft_s']:.2f} / {r['decode_ms']:.0f}" for r in runs[name])
            lines.append(f"| {config} | {name} | " + " | ".join(f"{best[name][k]:.3g}" for k, _ in keys)
                         + f" | {detail} |")
        lines.append(f"| {config} | after / before | "
                     + " | ".join(f"{best['after'][k] / best['before'][k]:.2f}" for k, _ in keys)
                     + f" | same greedy ids: {same} |")
    header = (f"Machine: {cpu_name()}, {os.cpu_count()} cores. Checkpoint `{args.model.name}`, prompt "
              f"{args.prompt!r}, {args.tokens} new tokens, image `{args.image.name}`; best of {args.repeats} "
              f"interleaved runs per build.\n")
    print(header)
    print("\n".join(lines))
    if args.write:
        write_block(args.write, f"<!-- against:{args.model.name} -->", header + "\n" + "\n".join(lines) + "\n")


def write_block(path: Path, marker: str, block: str, heading: str = ""):
    """Replace the text between two `marker` lines of `path`, or append it (under
    `heading`) when the marker is not there yet."""
    text = path.read_text() if path.exists() else ""
    new = f"{marker}\n{block}{marker}"
    if marker in text:
        start = text.index(marker)
        end = text.index(marker, start + len(marker)) + len(marker)
        text = text[:start] + new + text[end:]
    else:
        text = text.rstrip() + "\n\n" + heading + new + "\n"
    path.write_text(text)


def gpu(args):
    """One table: our CLI on cuda and wgpu in each dtype, transformers on cuda."""
    # Most informative first, so a run cut short by the machine's time still says most.
    runs = [("ours cuda bf16", lambda: ours(args, "cuda", "bf16", 1, args.timeout)),
            ("transformers cuda bfloat16", lambda: hf(args, "bfloat16", "cuda", 1, args.timeout)),
            ("ours cuda f16", lambda: ours(args, "cuda", "f16", 1, args.timeout)),
            ("ours cuda f32", lambda: ours(args, "cuda", "f32", 1, args.timeout)),
            ("transformers cuda float32", lambda: hf(args, "float32", "cuda", 1, args.timeout)),
            ("ours wgpu f16", lambda: ours(args, "wgpu", "f16", 1, args.timeout)),
            ("ours wgpu f32", lambda: ours(args, "wgpu", "f32", 1, args.timeout))]
    keys = [("load_s", "load s"), ("ttft_s", "time to first token s"), ("decode_ms", "decode ms/token")]
    lines = [f"| | {' | '.join(label for _, label in keys)} | same greedy ids as transformers f32 |",
             "|---" * (len(keys) + 2) + "|"]
    results = {}
    for name, run in runs:
        t0 = time.perf_counter()
        try:
            results[name] = run()
        except Failed as e:
            print(f"{name}: {e}", file=sys.stderr, flush=True)
            lines.append(f"| {name} | failed: see log |" + " |" * len(keys))
            continue
        print(f"{name}: {results[name]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    ref = results.get("transformers cuda float32", {}).get("generated_ids")
    for name, r in results.items():
        same = "" if ref is None else str(r["generated_ids"] == ref)
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.3g}" for k, _ in keys) + f" | {same} |")
    for mine, theirs in [("ours cuda f32", "transformers cuda float32"), ("ours cuda bf16", "transformers cuda bfloat16"),
                         ("ours cuda f16", "transformers cuda bfloat16")]:
        if mine in results and theirs in results:
            a, b = results[mine], results[theirs]
            lines.append(f"| {mine} / {theirs} | " + " | ".join(f"{a[k] / b[k]:.2f}" for k, _ in keys) + " | |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
