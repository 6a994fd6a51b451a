#!/usr/bin/env python3
"""How cost grows: time to first token against input resolution, and decode cost
against the number of generated tokens, for this crate's CLI (and transformers for
the first-token times up to --hf-up-to). Writes a block into docs/benchmarks.md and,
when matplotlib is importable, docs/scaling.png.

    python scripts/make_random_checkpoint.py --variant pg1-3b-448 --out /tmp/pg1-3b-448
    python scripts/make_random_checkpoint.py --variant pg1-3b-896 --out /tmp/pg1-3b-896
    python scripts/scaling.py --write docs/benchmarks.md

Decode figures come from one run of --tokens new tokens per configuration, read off the CLI's
per-step timestamps (`timings.decode_elapsed_s`): the mean ms/token over the first N
tokens, and the cost of the steps just before token N.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CLI, ROOT, Failed, cpu_name, hf, ours_config, write_block  # noqa: E402


def run_cli(args, model, config, tokens):
    """Our CLI on `model` in one configuration (see bench.ours_config)."""
    run = argparse.Namespace(cli=args.cli, model=model, image=args.image, prompt="caption en", tokens=tokens)
    return ours_config(run, config)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", type=Path, default=CLI)
    ap.add_argument("--image", type=Path, default=ROOT / "tests/fixtures/images/photo.png")
    ap.add_argument("--checkpoints", default="224:/tmp/pg1-3b-224,448:/tmp/pg1-3b-448,896:/tmp/pg1-3b-896")
    ap.add_argument("--ttft", default="f32,f32-weights,bf16-weights,int8-weights",
                    help="our configurations for the first-token curve (see bench.py --ours)")
    ap.add_argument("--backend-up-to", type=int, default=448,
                    help="largest resolution timed for configurations without host weights")
    ap.add_argument("--hf-dtypes", default="float32,bfloat16")
    ap.add_argument("--hf-up-to", type=int, default=896, help="largest resolution timed with transformers")
    ap.add_argument("--decode", default="f32,bf16-weights,int8-weights")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--marks", default="16,256,1024")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    ckpts = [(int(r), Path(p)) for r, p in (x.split(":") for x in args.checkpoints.split(","))]
    marks = [int(m) for m in args.marks.split(",")]

    ttft_rows = []
    for res, path in ckpts:
        row = {"res": res}
        for config in args.ttft.split(","):
            if not config.endswith("-weights") and res > args.backend_up_to:
                continue
            r = run_cli(args, path, config, 1)
            row[f"ours {config}"] = r["ttft_s"]
            row[f"ours {config} rss"] = r["rss_gb"]
            row["prompt_tokens"] = r["prompt_tokens"]
            print(res, config, r["ttft_s"], file=sys.stderr, flush=True)
        if res <= args.hf_up_to:
            a = argparse.Namespace(model=path, image=args.image, prompt="caption en", tokens=2)
            for dtype in args.hf_dtypes.split(","):
                try:
                    row[f"transformers {dtype}"] = hf(a, dtype)["ttft_s"]
                except Failed as e:
                    print(e, file=sys.stderr)
                print(res, "hf", dtype, row.get(f"transformers {dtype}"), file=sys.stderr, flush=True)
        ttft_rows.append(row)

    decode = {}
    base = dict(ckpts)[224]
    for config in args.decode.split(","):
        r = run_cli(args, base, config, args.tokens)
        decode[config] = r["decode_elapsed_s"]
        print("decode", config, decode[config][-1], file=sys.stderr, flush=True)

    ours_cols = [f"ours {c}" for c in args.ttft.split(",")]
    cols = ours_cols + [f"transformers {d}" for d in args.hf_dtypes.split(",")]
    cols = [c for c in cols if any(c in r for r in ttft_rows)]
    lines = ["| input | prompt tokens | " + " | ".join(f"{c} s" for c in cols) + " |",
             "|---" * (len(cols) + 2) + "|"]
    for r in ttft_rows:
        cells = [f"{r[c]:.1f}" if c in r else "not run" for c in cols]
        lines.append(f"| {r['res']} px | {r['prompt_tokens']} | " + " | ".join(cells) + " |")
    lines += ["", "Peak RSS (GB) of those runs:", "",
              "| input | " + " | ".join(ours_cols) + " |", "|---" * (len(ours_cols) + 1) + "|"]
    for r in ttft_rows:
        cells = [f"{r[c + ' rss']:.1f}" if c + " rss" in r else "not run" for c in ours_cols]
        lines.append(f"| {r['res']} px | " + " | ".join(cells) + " |")
    ttft_table = "\n".join(lines)

    lines = ["| generated tokens | " + " | ".join(f"ours {d}: mean ms/token | ours {d}: ms/token near the end"
                                                  for d in decode) + " |",
             "|---" * (2 * len(decode) + 1) + "|"]
    for m in marks:
        cells = []
        for d, el in decode.items():
            if m - 1 > len(el):
                cells += ["", ""]
                continue
            mean = 1000 * el[m - 2] / (m - 1)
            lo = max(0, m - 9)
            recent = 1000 * (el[m - 2] - (el[lo - 1] if lo > 0 else 0.0)) / (m - 1 - lo)
            cells += [f"{mean:.0f}", f"{recent:.0f}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    decode_table = "\n".join(lines)

    header = (f"Machine: {cpu_name()}, {os.cpu_count()} cores. Random-weight PaliGemma 1 3B checkpoints "
              f"(`scripts/make_random_checkpoint.py`), prompt 'caption en', image `{args.image.name}`.")
    block = (f"{header}\n\nTime to first token (vision tower, projector, prefill, first token) by input size:\n\n"
             f"{ttft_table}\n\nDecode cost by number of generated tokens (224 px, one run of {args.tokens} "
             f"tokens per configuration; \"near the end\" = the 8 steps before that token):\n\n{decode_table}\n")
    print(block)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        for c in cols:
            pts = [(r["res"], r[c]) for r in ttft_rows if c in r]
            a.plot(*zip(*pts), marker="o", label=c)
        a.set(xlabel="input pixels (side)", ylabel="time to first token (s)", xscale="log", yscale="log",
              title="Time to first token")
        a.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        a.set_xticks([r["res"] for r in ttft_rows], [str(r["res"]) for r in ttft_rows])
        a.legend()
        for d, el in decode.items():
            steps = [1000 * (el[i] - (el[i - 1] if i else 0.0)) for i in range(len(el))]
            b.plot(range(2, len(el) + 2), steps, label=f"ours {d}", linewidth=0.8)
        b.set(xlabel="generated token", ylabel="ms per decode step", title="Decode step cost (224 px)")
        b.legend()
        fig.tight_layout()
        out = ROOT / "docs" / "scaling.png"
        fig.savefig(out, dpi=110)
        block += "\n![Scaling curves](scaling.png)\n"
        print(f"wrote {out}", file=sys.stderr)
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)

    if args.write:
        write_block(args.write, "<!-- scaling -->", block, "## Scaling\n\n")

if __name__ == "__main__":
    main()
