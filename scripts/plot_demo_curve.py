#!/usr/bin/env python3
"""Plot the demo model's learning curve (docs/demo-curve.csv, written by
`cargo run --release --example train_demo`) into docs/demo-curve.png: the loss of each
step, its mean over 100 steps, and the learning rate.

    python scripts/plot_demo_curve.py [--csv docs/demo-curve.csv] [--out docs/demo-curve.png]
"""

import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", default="docs/demo-curve.csv")
    ap.add_argument("--out", default="docs/demo-curve.png")
    args = ap.parse_args()
    rows = list(csv.DictReader(open(args.csv)))
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    lr = [float(r["lr"]) for r in rows]
    window = 100
    mean = [sum(loss[max(0, i - window + 1) : i + 1]) / len(loss[max(0, i - window + 1) : i + 1]) for i in range(len(loss))]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, loss, color="#bbbbbb", linewidth=0.5, label="loss per step")
    ax.plot(steps, mean, color="#1f4e9c", linewidth=1.5, label=f"mean of {window} steps")
    ax.set_xlabel("step (16 examples each)")
    ax.set_ylabel("loss (nats per supervised token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(steps, lr, color="#d08c1a", linewidth=1, label="learning rate")
    twin.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right")
    minutes = float(rows[-1]["seconds"]) / 60
    ax.set_title(f"demo model from scratch: {steps[-1]} steps, {minutes:.0f} min on 2 CPU cores")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
