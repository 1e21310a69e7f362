"""Draw the Fashion-MNIST likelihood table as a figure: the test NLL of every row beside pythae's, and the
held-out -ELBO of vaekit's models along their training (the learning curves the table keeps).

    python benchmarks/plot_likelihood.py                      # writes benchmarks/results/likelihood-fashion-mnist.png
    python benchmarks/plot_likelihood.py --out figure.png

It reads only what likelihood_table.py wrote (the 30-minute and 2-hour results files and their -curves
folders) and measures nothing. Rows of different sittings ran at different machine speeds (the results
files record each row's date and matmul rate), so the curves compare shapes, not seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from vaekit.report import _pyplot, _save_figure  # headless pyplot; a figure written atomically, then closed

DEEP = ("vaekit-hierarchical", "vaekit-hybrid")
RESULTS = Path(__file__).parent / "results"
TABLES = {"30 min": "likelihood-fashion-mnist-30m", "2 h": "likelihood-fashion-mnist-2h"}


def rows(table: str) -> dict[str, dict]:
    path = RESULTS / f"{table}.json"
    return json.loads(path.read_text())["models"] if path.exists() else {}


def curve(table: str, name: str) -> tuple[list[float], list[float]]:
    """Wall-clock minutes and held-out -ELBO of one run, from its metrics.csv as the table kept it."""
    path = RESULTS / f"{table}-curves" / f"{name}.csv"
    if not path.exists():
        return [], []
    with path.open() as f:
        points = [(float(r["wall_seconds"]) / 60, float(r["heldout_neg_elbo"])) for r in csv.DictReader(f)]
    return [m for m, _ in points], [e for _, e in points]


def draw(out: Path) -> None:
    plt = _pyplot()
    tables = {budget: rows(table) for budget, table in TABLES.items()}  # each results file read once
    figure, (bars, curves) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.3]})

    ranked = sorted(tables["30 min"].items(), key=lambda item: item[1]["nll"], reverse=True)
    names = [f"{name} ({row['date'][5:]})" for name, row in ranked]
    nlls = [row["nll"] for _, row in ranked]
    colours = ["tab:orange" if name.startswith("pythae") else "tab:blue" for name, _ in ranked]
    bars.barh(names, nlls, color=colours)
    for y, nll in enumerate(nlls):
        bars.text(nll + 0.1, y, f"{nll:.2f}", va="center", fontsize=8)
    bars.set_xlim(min(nlls) - 2, max(nlls) + 1.5)  # the differences, not the common 225 nats
    bars.set_xlabel("test NLL, nats (k = 5,000, all 10,000 test images; lower is better)")
    bars.set_title("30 minutes on 2 cores (month-day trained): vaekit blue, pythae orange", fontsize=10)
    bars.tick_params(axis="y", labelsize=8)

    for budget, style in (("30 min", "-"), ("2 h", "--")):
        for name, row in tables[budget].items():
            minutes, elbo = curve(TABLES[budget], name)
            if minutes and name.startswith(DEEP):  # the one-layer models' noisy curves would hide these
                label = f"{name}, {budget} ({row['date']}, {row['epochs']} epochs)"
                curves.plot(minutes, elbo, style, linewidth=1.2, label=label)
    curves.set_ylim(224, 240)  # the early epochs of the deep models start far above the rest
    curves.set_xlabel("wall-clock minutes (evaluation and saving included)")
    curves.set_ylabel("held-out −ELBO, nats")
    curves.set_title("vaekit's deep models as they trained (10 % of the training images held out)", fontsize=10)
    curves.legend(fontsize=7)
    curves.grid(alpha=0.3)

    figure.tight_layout()
    _save_figure(figure, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "likelihood-fashion-mnist.png")
    args = parser.parse_args()
    draw(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
