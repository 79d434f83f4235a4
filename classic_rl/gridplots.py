"""Pictures of grid MDPs: value heatmaps with greedy-policy arrows, paths, learning curves, a Q-value GIF.

Drawing only: every function takes values and policies computed elsewhere.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from classic_rl.mdp import MDP  # noqa: E402

# Cells that carry no decision of their own are painted flat and labelled instead of showing a value.
SPECIAL_CELLS = {"G": ("#f2c14e", "G"), "H": ("#1d3557", "H"), "C": ("#6c757d", ""), "#": ("#111111", "")}


def _grid(mdp: MDP) -> list[str]:
    if mdp.grid is None:
        raise ValueError(f"MDP {mdp.name} has no grid layout to draw (only grid MDPs can be drawn)")
    return mdp.grid


def _paint_special(ax, grid: list[str]) -> None:
    for r, row in enumerate(grid):
        for c, ch in enumerate(row):
            if ch in SPECIAL_CELLS:
                color, label = SPECIAL_CELLS[ch]
                ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, color=color, zorder=2))
                if label:
                    ax.text(c, r, label, ha="center", va="center", color="white" if ch == "H" else "black",
                            fontsize=11, fontweight="bold", zorder=3)
            elif ch == "S":
                ax.text(c - 0.42, r - 0.42, "S", ha="left", va="top", fontsize=8, fontweight="bold", zorder=3)


def _frame(ax, grid: list[str], title: str) -> None:
    H, W = len(grid), len(grid[0])
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)  # row 0 on top, as the map is written
    ax.set_xticks(np.arange(-0.5, W, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, H, 1), minor=True)
    ax.grid(which="minor", color="white", lw=1.0)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    ax.set_title(title, fontsize=10)


def draw_values(ax, mdp: MDP, V: torch.Tensor, policy: torch.Tensor | None = None, title: str = "",
                vmin: float | None = None, vmax: float | None = None, annotate: bool = True):
    """Heatmap of V(s) on the grid, with an arrow for the policy's action in every decision cell.
    Returns (image, arrows or None) so that an animation can update them in place."""
    grid = _grid(mdp)
    H, W = len(grid), len(grid[0])
    img = V.detach().double().numpy().reshape(H, W).copy()
    decision = np.array([[ch in "S." for ch in row] for row in grid])
    shown = img[decision]
    vmin = float(shown.min()) if vmin is None else vmin
    vmax = float(shown.max()) if vmax is None else vmax
    im = ax.imshow(np.where(decision, img, np.nan), cmap="viridis", vmin=vmin, vmax=vmax)
    arrows = None
    _paint_special(ax, grid)
    annotate = annotate and W * H <= 64
    if policy is not None:
        dr, dc = np.array([mdp.action_deltas[int(a)] for a in policy]).T.reshape(2, H, W)
        rr, cc = np.nonzero(decision)
        lift = 0.12 if annotate else 0.0  # room for the value written under the arrow
        arrows = ax.quiver(cc, rr - lift, dc[rr, cc], dr[rr, cc], angles="xy", scale_units="xy", scale=2.6, pivot="middle",
                  color="white", width=0.012 if W <= 8 else 0.006, zorder=4)
    if annotate:
        for r, c in zip(*np.nonzero(decision)):
            ax.text(c, r + 0.33, f"{img[r, c]:.2f}", ha="center", va="center", fontsize=7, color="white", zorder=4)
    _frame(ax, grid, title)
    return im, arrows


def draw_paths(ax, mdp: MDP, paths: dict[str, list[int]], colors: dict[str, str] | None = None, title: str = ""):
    """The map with each labelled path drawn through the centres of the cells it visits."""
    grid = _grid(mdp)
    ax.imshow(np.zeros((len(grid), len(grid[0]))), cmap=ListedColormap(["#e9ecef"]), vmin=0, vmax=1)
    _paint_special(ax, grid)
    for i, (label, path) in enumerate(paths.items()):
        rc = np.array([mdp.cell(s) for s in path], dtype=float)
        off = (i - (len(paths) - 1) / 2) * 0.12  # side by side where paths share cells
        ax.plot(rc[:, 1] + off, rc[:, 0] + off, "-o", lw=2.5, ms=4, label=label, zorder=5,
                color=(colors or {}).get(label))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=len(paths), fontsize=9, frameon=False)
    _frame(ax, grid, title)


def smooth(x, window: int) -> np.ndarray:
    """Moving average over ``window`` points (shorter at the start)."""
    x = np.asarray(x, dtype=float)
    c = np.cumsum(np.insert(x, 0, 0.0))
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def plot_curves(ax, curves: dict[str, np.ndarray], window: int = 10, xlabel: str = "episode",
                ylabel: str = "return", title: str = "", ylim: tuple[float, float] | None = None):
    for label, y in curves.items():
        ax.plot(np.arange(1, len(y) + 1), smooth(y, window), lw=1.6, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(title, fontsize=10)


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def q_animation(mdp: MDP, snapshots: list[tuple[int, torch.Tensor]], path: str | Path, label: str = "Q-learning",
                fps: int = 4) -> Path:
    """A GIF of max_a Q(s, a) and the greedy arrows, one frame per snapshot (on one colour scale)."""
    import imageio.v3 as iio

    from classic_rl.dynamic_programming import greedy_policy

    grid = _grid(mdp)
    H, W = len(grid), len(grid[0])
    decision = np.array([[ch in "S." for ch in row] for row in grid])
    values = [Q.max(-1).values.numpy().reshape(H, W) for _, Q in snapshots]
    vmin, vmax = float(min(v[decision].min() for v in values)), float(max(v[decision].max() for v in values))
    deltas = np.array(mdp.action_deltas)
    rr, cc = np.nonzero(decision)

    def title(episode):
        return f"{label} on {mdp.name}: max_a Q(s,a) after {episode} episodes"

    # One figure, updated in place: redrawing it from scratch per frame costs ~10x more.
    fig, ax = plt.subplots(figsize=(max(4.0, 0.62 * W + 1.4), 0.62 * H + 1.0))
    im, arrows = draw_values(ax, mdp, snapshots[0][1].max(-1).values, greedy_policy(snapshots[0][1]), vmin=vmin,
                             vmax=vmax, annotate=False, title=title(snapshots[0][0]))
    fig.colorbar(im, ax=ax, fraction=0.025)
    fig.tight_layout()
    frames = []
    for (episode, Q), v in zip(snapshots, values):
        im.set_data(np.where(decision, v, np.nan))
        d = deltas[greedy_policy(Q).numpy().reshape(H, W)[rr, cc]]
        arrows.set_UVC(d[:, 1], d[:, 0])
        ax.set_title(title(episode), fontsize=10)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    path = Path(path)
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=int(1000 / fps), loop=0)
    return path
