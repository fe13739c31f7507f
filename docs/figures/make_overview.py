"""Composes docs/figures/overview.png, the front page's figure.

The quality preset's sample grids (fp32 and on-demand uploads, the same
sampling noise) beside the energy of the two runs at the kkt allocation.
The numbers are those of the run in docs/results.md ("Quality preset");
the grids are benchmarks/figures/quality_samples_*.png from that run.

  python docs/figures/make_overview.py
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
GRIDS = ROOT / "benchmarks" / "figures"
OUT = ROOT / "docs" / "figures" / "overview.png"

# Quality preset, seed 0, kkt allocation (docs/results.md, shared 2-core
# x86 CPU): total and communication energy (J), uploaded MB, held-out loss.
RUNS = {
  "fp32": dict(total=1900, comm=61.6, mb=2040, loss=0.04581, bits="32"),
  "on-demand": dict(total=1568, comm=7.6, mb=316, loss=0.04565, bits="4.94"),
}
COLORS = {"fp32": "tab:gray", "on-demand": "tab:green"}


def _grid(ax, name: str, path: pathlib.Path) -> None:
  r = RUNS[name]
  ax.imshow(mpimg.imread(path), cmap="gray")
  ax.set_title(
    f"{name} uploads ({r['bits']} bits)\nheld-out loss {r['loss']:.4f}",
    fontsize=10,
  )
  ax.axis("off")


def _bars(ax, key: str, label: str) -> None:
  names = list(RUNS)
  vals = [RUNS[n][key] for n in names]
  bars = ax.bar(names, vals, color=[COLORS[n] for n in names])
  ax.bar_label(bars, labels=[f"{v:g}" for v in vals], fontsize=9)
  ax.set_title(label, fontsize=10)
  ax.set_ylim(0, max(vals) * 1.25)
  ax.tick_params(labelsize=9)
  ax.spines[["top", "right"]].set_visible(False)


def main() -> None:
  fig = plt.figure(figsize=(11, 4.2), layout="constrained")
  grid = fig.add_gridspec(3, 3, width_ratios=[1, 1, 0.75])
  _grid(fig.add_subplot(grid[:, 0]), "fp32", GRIDS / "quality_samples_fp32.png")
  _grid(
    fig.add_subplot(grid[:, 1]),
    "on-demand",
    GRIDS / "quality_samples_ondemand.png",
  )
  _bars(fig.add_subplot(grid[0, 2]), "total", "device energy, 80 rounds (J)")
  _bars(fig.add_subplot(grid[1, 2]), "comm", "of it communication (J)")
  _bars(fig.add_subplot(grid[2, 2]), "mb", "uploaded (MB)")
  fig.suptitle(
    "Fashion-MNIST, 6 clients x 80 rounds, energy-optimal (kkt) allocation",
    fontsize=11,
  )
  fig.savefig(OUT, dpi=100)
  print(OUT)


if __name__ == "__main__":
  main()
