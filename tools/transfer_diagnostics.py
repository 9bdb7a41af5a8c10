"""Where the slow weights of finished training runs ended up: per layer, the mean |w| of the weight devices (C), the
share of them within one granularity of a bound, and for the transfer algorithms the spread of the fast array A
and the share of the buffer H at saturation. Read from each run's checkpoint.npz (the state after the last epoch).

    python tools/transfer_diagnostics.py RUN_DIR [RUN_DIR ...] [--doc docs/algorithms.md]

RUN_DIR: a training run's directory (`edgelearn train --out`, a sweep's runs/KEY, or a directory of
tools/memory_light_table.py --out). With --doc, rewrites the transfer-diagnostics block of that file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from edgelearn.devices import load_card
from edgelearn.report import replace_marked_block
from firmware_model.crossbar import P_W_MAX, P_W_MIN


def layer_figures(z, k: int, granularity: float) -> dict:
    """Figures of layer k over all its tiles: C's mean |w| and share near a bound; A's std and share near a bound;
    H's share at saturation (transfer runs only)."""
    tiles = sorted({m.group(1) for f in z.files if (m := re.fullmatch(rf"layer{k}\.(\d+)\.state", f))})
    if not tiles:
        return {}
    w = np.concatenate([z[f"layer{k}.{t}.state"].ravel() for t in tiles])
    p = np.concatenate([z[f"layer{k}.{t}.params"].reshape(-1, z[f"layer{k}.{t}.params"].shape[-1]) for t in tiles])
    out = {"c_abs_w": float(np.abs(w).mean()),
           "c_at_bound": float(np.mean((w <= p[:, P_W_MIN] + granularity) | (w >= p[:, P_W_MAX] - granularity)))}
    fast = [f"transfer.{t}.fast.state" for t in tiles if f"transfer.{t}.fast.state" in z.files]
    if fast:
        a = np.concatenate([z[f].ravel() for f in fast])
        pa = np.concatenate([z[f[:-len("state")] + "params"].reshape(-1, p.shape[-1]) for f in fast])
        h = np.concatenate([z[f"transfer.{t}.h"].ravel() for t in tiles])
        top = np.iinfo(h.dtype).max
        out.update(a_std=float(a.std()),
                   a_at_bound=float(np.mean((a <= pa[:, P_W_MIN] + granularity) | (a >= pa[:, P_W_MAX] - granularity))),
                   h_saturated=float(np.mean(np.abs(h.astype(np.int64)) >= top)))
    return out


def diagnose(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    config = summary["config"]
    card = load_card(config["card"]) if config.get("card") else None
    if card is None:
        raise SystemExit(f"transfer_diagnostics: {run}: a digital run has no devices")
    with np.load(run / "checkpoint.npz") as z:
        layers = []
        for k in range(64):
            figures = layer_figures(z, k, card.model.granularity)
            if not figures:
                break
            layers.append(figures)
    return {"run": run.name, "card": config["card"], "algorithm": config["algorithm"],
            "chi_bits": (config.get("pulses") or {}).get("chi_bits"), "transfer": config.get("transfer"),
            "test_accuracy": summary["test_accuracy"],
            "epochs": len(summary["epochs"]), "layers": layers}


def table(rows: list[dict]) -> str:
    n = max(len(r["layers"]) for r in rows)
    c_heads = [f"layer {k}: C mean \\|w\\|, near a bound" for k in range(n)]
    a_heads = [f"layer {k}: A std, H saturated" for k in range(n)]
    head = ("| card | method (fast_lr / transfer_lr) | epochs | test accuracy | " + " | ".join(c_heads) + " | "
            + " | ".join(a_heads) + " |")
    lines = [head, "|" + "---|" * (4 + 2 * n)]
    for r in rows:
        method = r["algorithm"] + (f", χ int{r['chi_bits']}" if r["chi_bits"] else "")
        if r["transfer"]:
            method += f" ({r['transfer']['fast_lr']:g} / {r['transfer']['transfer_lr']:g})"
        c = [f"{x['c_abs_w']:.2f}, {x['c_at_bound']:.0%}" for x in r["layers"]]
        a = [f"{x['a_std']:.2f}, {x['h_saturated']:.0%}" if "a_std" in x else "-" for x in r["layers"]]
        lines.append(f"| {r['card']} | {method} | {r['epochs']} | {r['test_accuracy']:.3f} | " + " | ".join(c)
                     + " | " + " | ".join(a) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--doc", type=Path, help="rewrite the transfer-diagnostics block of this markdown file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not (run / "checkpoint.npz").is_file() or not (run / "summary.json").is_file():
            raise SystemExit(f"transfer_diagnostics: {run}: expected a finished run (summary.json, checkpoint.npz)")
    rows = [diagnose(run) for run in args.runs]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    block = (f"`python tools/transfer_diagnostics.py RUN_DIR ...` on {len(rows)} finished runs (state after the last "
             "epoch): per layer, the weight devices' (C's) mean |w| and the share within one granularity of a "
             "bound; for the transfer algorithms the fast array's (A's) standard deviation and the share of the "
             "buffer H at saturation.\n\n" + table(rows))
    if args.doc:
        args.doc.write_text(replace_marked_block(args.doc.read_text(encoding="utf-8"), "transfer-diagnostics", block,
                                                 str(args.doc)), encoding="utf-8")
        print(f"wrote {args.doc}")
    else:
        print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
