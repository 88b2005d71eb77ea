"""Runs a named set of ablations and writes a markdown table and a bar chart.

  python scripts/ablations.py --set A --out runs/ablations_A          # demo data
  python scripts/ablations.py --set B --out runs/ablations_B --config.data.root=/data/affwild2

Sets, in the shape of the seed papers' tables:
- A: system A with and without random masking (table 5) and with sequence lengths 1 / 10 / 100 /
  200 (table 6), on VA, EXPR and AU.
- B: system B, full / without TCN / without the Transformer encoder (table 5), on VA, EXPR, AU.
  (`--config.data.features=<store of the encoder before fine-tuning>` gives the "w/o
  fine-tuning" row on real data.)
- C: system C with each non-empty subset of its feature sets, on VA, EXPR and AU; with
  `--tasks mtl`, the rows of its table 1 on the multi-task challenge (EAC, POSTER, ResNet18,
  POSTER2, ResNet18+FAU, ResNet18+POSTER2, POSTER2+POSTER+EAC, ResNet18+POSTER2+FAU) with its
  columns: valence CCC, arousal CCC, EXPR F1, AU F1 and the P_MTL score. On the demo data the
  demo is generated with these five feature sets (their dims as the paper's extractors').

  python scripts/ablations.py --set C --tasks mtl --out runs/table1            # demo data
  python scripts/ablations.py --set C --tasks mtl --out runs/table1 --config.data.root=/data/affwild2

With no data root the demo dataset (and the laptop-size variants) is used. Each run has its own
workdir under --out, so an interrupted table resumes.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.common import load_config_arg, parse_with_overrides, set_override  # noqa: E402

# The columns of system C's table 1 and the metric keys they come from.
MTL_COLUMNS = (("Valence CCC", "valence_ccc"), ("Arousal CCC", "arousal_ccc"),
               ("EXPR F1", "expr_f1"), ("AU F1", "au_f1"), ("P_MTL", "p_mtl"))

TASKS = ("va", "expr", "au", "mtl")
# System C's table 1: its rows (feature sets) and the dims of those sets.
TABLE1_ROWS = (("EAC", ("eac",)), ("POSTER", ("poster",)), ("ResNet18", ("resnet18",)),
               ("POSTER2", ("poster2",)), ("ResNet18+FAU", ("resnet18", "fau")),
               ("ResNet18+POSTER2", ("resnet18", "poster2")),
               ("POSTER2+POSTER+EAC", ("poster2", "poster", "eac")),
               ("ResNet18+POSTER2+FAU", ("resnet18", "poster2", "fau")))
TABLE1_SETS = "resnet18:512,poster:768,poster2:768,eac:2048,fau:17"


def runs_of(name: str, demo: bool, sets: tuple[str, ...], mtl: bool = False) -> list[tuple[str, str]]:
    """(row label, variant string) of each ablation row."""
    d = "demo," if demo else ""
    if name == "C" and mtl:
        return [(label, f"{d}model=fusion,sets={'+'.join(row)}") for label, row in TABLE1_ROWS]
    if name == "A":
        return [("full (masking p=0.2, 100 frames)", f"{d}"), ("w/o masking", f"{d}mask=0"),
                ("seq_len 1", f"{d}seq_len=1"), ("seq_len 10", f"{d}seq_len=10"),
                ("seq_len 100", f"{d}seq_len=100"), ("seq_len 200", f"{d}seq_len=200")]
    if name == "B":
        return [("full (TCN + Transformer)", f"{d}model=tcn"),
                ("w/o TCN", f"{d}model=tcn,no_tcn"),
                ("w/o Transformer", f"{d}model=tcn,no_transformer")]
    if name == "C":
        subsets = [c for r in range(1, len(sets) + 1) for c in itertools.combinations(sets, r)]
        return [(" + ".join(c), f"{d}model=fusion,sets={'+'.join(c)}") for c in subsets]
    raise SystemExit(f"unknown ablation set {name!r}: use A, B or C")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--set", required=True, choices=("A", "B", "C"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--tasks", default="va,expr,au")
    parser.add_argument("--feature-sets", default="vit,openface", help="system C's sets")
    parser.add_argument("--steps", type=int, default=0, help="shorten every run")
    parser.add_argument("--size", choices=("auto", "demo", "paper"), default="auto",
                        help="laptop-size demo variants or the papers' model sizes; auto: demo "
                             "sizes on the demo data, paper sizes with data.root set")
    parser.epilog = "Config overrides: --config.KEY=VALUE, repeatable (e.g. --config.data.root=DIR)"
    args, overrides = parse_with_overrides(parser)

    from abaw_jax import files, metrics, train
    out = pathlib.Path(args.out)
    has_root = any(o.startswith("data.root=") for o in overrides)
    demo = args.size == "demo" or (args.size == "auto" and not has_root)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"unknown task {unknown[0]!r}: use {', '.join(TASKS)}")
    mtl = tasks == ["mtl"]
    if "mtl" in tasks and not mtl:
        raise SystemExit("--tasks mtl is a table of its own: give it alone")
    rows = runs_of(args.set, demo, tuple(args.feature_sets.split(",")), mtl)
    table: dict[str, dict[str, float]] = {}
    start = time.time()
    for label, variant in rows:
        for task in tasks:
            config = load_config_arg(f"{ROOT / 'configs' / task}.py:{variant}")
            if mtl and args.set == "C" and demo and not has_root:
                config.data.demo.sets = TABLE1_SETS
            for item in overrides:
                set_override(config, item)
            if args.steps:
                config.total_steps = args.steps
                config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, args.steps // 4)
                config.eval_every = config.checkpoint_every = args.steps
            config.progress = False
            slug = variant.replace(",", "_").replace("=", "-").replace("+", "-") or "full"
            result = train.train_and_evaluate(config, out / f"{task}_{slug}")
            score_key = f"val/{metrics.score_name(config.task)}"
            if mtl:
                table[label] = {c: result[f"val/{key}"] for c, key in MTL_COLUMNS}
            else:
                table.setdefault(label, {})[task] = result[score_key]
            print(f"{label:40s} {task:5s} {result[score_key]:.4f}", flush=True)
    minutes = (time.time() - start) / 60
    metric = {"va": "CCC (V+A)/2", "expr": "F1", "au": "F1"}
    columns = [c for c, _ in MTL_COLUMNS] if mtl else [f"{t.upper()} {metric[t]}" for t in tasks]
    lines = [f"Ablation set {args.set} ({'configured data' if has_root else 'demo data'}, "
             f"{minutes:.1f} min)", "",
             "| variant | " + " | ".join(columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for label, scores in table.items():
        values = scores.values() if mtl else [scores[t] for t in tasks]
        lines.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    markdown = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    files.write_atomic(out / "table.md", markdown)
    files.write_json(out / "table.json", table)
    print(markdown)
    _bar_chart(table, columns if mtl else tasks, out / "table.png", f"Ablation set {args.set}")


def _bar_chart(table, tasks, path, title) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(table)
    width = 0.8 / len(tasks)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels)), 4))
    for i, task in enumerate(tasks):
        xs = [j + i * width for j in range(len(labels))]
        ax.bar(xs, [table[l][task] for l in labels], width, label=task if " " in task else task.upper())
    ax.set_xticks([j + width * (len(tasks) - 1) / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("validation score")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
