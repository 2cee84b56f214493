"""The run's results as JSON, a Markdown table and (with matplotlib installed) a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.figures import Figure


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def _target(figure: Figure) -> str:
    if figure.target is None:
        return ""
    sign = "<=" if figure.better == "lower" else ">="
    return f"{sign} {figure.target:g}x" if figure.target_is_ratio else f"{sign} {figure.target:g} {figure.unit}"


def code_line(machine: dict[str, Any]) -> str:
    """The commit measured and how, as one line (older results did not record it)."""
    if "commit" not in machine:
        return "commit not recorded"
    dirty = " plus uncommitted changes" if machine.get("dirty") else ""
    cache = "with" if machine.get("bytecode_cache") else "without"
    return f"commit {machine['commit']}{dirty}, {machine.get('install', '?')} {cache} cached bytecode"


def markdown(figures: list[Figure], machine: dict[str, Any], params: dict[str, Any]) -> str:
    lines = [
        f"# Benchmark results ({'quick' if params.get('quick') else 'full'} run)",
        "",
        f"- when: {machine['started']} (UTC), {machine['duration_s']:.0f} s",
        f"- code: {code_line(machine)}",
        f"- machine: {machine['cpus']} CPUs, {machine['kernel']}, {machine['openssh']}, Python {machine['python']}",
        f"- load before: `{machine['uptime_before']}`",
        f"- load after: `{machine['uptime_after']}`",
        f"- parameters: `{json.dumps(params)}`",
        "",
        "Ratio = ours / OpenSSH reference from the same run. Lower is better for times and memory,",
        "higher for rates. Auth-scale figures have no OpenSSH peer: their target is absolute, and",
        "the reference column is `ssh-keygen -s` host-certificate signing on this machine.",
        "",
        *table(figures),
    ]
    return "\n".join(lines) + "\n"


def table(figures: list[Figure]) -> list[str]:
    """The figures as Markdown table lines, header first."""
    lines = ["| section | figure | ours | reference (same run) | ratio | target | met |",
             "|---|---|---|---|---|---|---|"]
    for f in figures:
        met = {True: "yes", False: "**no**", None: ""}[f.met]
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
        ref = f"{_num(f.reference, f.unit)}: {f.reference_name}" if f.reference is not None else ""
        name = f"{f.name} ({f.note})" if f.note else f.name
        lines.append(f"| {f.section} | {name} | {_num(f.value, f.unit)} | {ref} | {ratio} | {_target(f)} | {met} |")
    return lines


def write(out: Path, stem: str, figures: list[Figure], machine: dict[str, Any], params: dict[str, Any],
          details: dict[str, Any]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(
        {"machine": machine, "params": params, "figures": [f.to_dict() for f in figures], "details": details},
        indent=2, default=str,
    ))
    paths["markdown"].write_text(markdown(figures, machine, params))
    png = plot(out / f"{stem}.png", figures)
    if png is not None:
        paths["plot"] = png
    return paths


def plot(path: Path, figures: list[Figure]) -> Path | None:
    """Ours against the OpenSSH reference for every figure that has one; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    compared = [f for f in figures if f.reference is not None and f.ratio is not None]
    if not compared:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(compared) + 1.5))
    names = [f"{f.section}: {f.name}"[:70] for f in compared]
    ratios = [f.ratio for f in compared]
    colors = ["tab:green" if f.met in (True, None) else "tab:red" for f in compared]
    ax.barh(range(len(compared)), ratios, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    for i, f in enumerate(compared):
        if f.target is not None and f.target_is_ratio:
            ax.plot([f.target, f.target], [i - 0.4, i + 0.4], color="tab:blue", linewidth=2)
        ax.text(ratios[i], i, f" {ratios[i]:.2f}x", va="center", fontsize=8)
    ax.set_yticks(range(len(compared)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ours / reference in the same run (line at 1.0; blue marks: target)")
    ax.set_title("teleport-runtime vs OpenSSH")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
