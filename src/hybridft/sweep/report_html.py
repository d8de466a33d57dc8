"""The decision report as one self-contained HTML page (PNG plots inlined as data URIs).

Input is plain data (``ReportData``), gathered by ``sweep.report``; every number on the page comes
from it, so a test can recompute them from the MLflow runs. Plots use matplotlib's object API with
the Agg canvas (no pyplot global state).
"""

from __future__ import annotations

import base64
import html
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARM_LABELS = {
    "sft_only": "SFT only",
    "instruction_only": "instruction only",
    "best_hybrid": "best hybrid",
    "base_start": "SFT from the base",
    "it_start": "SFT from the instruction-tuned start",
}
VERDICT_LABELS = {
    "holds": "holds",
    "does_not_hold": "does not hold",
    "inconclusive": "inconclusive",
}


@dataclass
class ReportData:
    sweep: str
    space_file: str
    objective: str
    arms: list[dict[str, Any]]  # one row per (arm, seed) at all labels
    efficiency: list[dict[str, Any]]  # rows per (arm, labels, seed)
    verdict: dict[str, Any]
    trials: list[dict[str, Any]]  # the sweep's trials (params, metrics, status)
    pareto: list[int] = field(default_factory=list)  # indices into trials
    importances: dict[str, float] = field(default_factory=dict)
    directions: Sequence[str] = field(default_factory=list)
    objectives: list[str] = field(default_factory=list)
    best_params: dict[str, Any] = field(default_factory=dict)
    registration: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)  # Evidence.to_json() rows
    guard: dict[str, Any] = field(default_factory=dict)  # the undertrained guard's findings


def _figure(width: float = 6.0, height: float = 3.6, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def _png(fig: Any) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def arm_summary(arms: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm: mean of each measure over seeds (None where no seed measured it)."""
    out: dict[str, dict[str, Any]] = {}
    for arm in ARM_LABELS:
        rows = [r for r in arms if r["arm"] == arm]
        if not rows:
            continue

        def mean(key: str, rows: list[dict[str, Any]] = rows) -> float | None:
            vals = [r[key] for r in rows if r.get(key) is not None]
            return statistics.fmean(vals) if vals else None

        out[arm] = {
            "seeds": len(rows),
            "target_score": mean("target_score"),
            "heldout_score": mean("heldout_score"),
            "forgetting": mean("forgetting"),
            "ece": mean("ece"),
            "trained_tokens": mean("trained_tokens"),
            "wall_s": mean("wall_s"),
        }
    return out


def plot_scores(verdict: dict[str, Any]) -> str:
    fig, ax = _figure()
    arms = list(verdict["intervals"])
    iv = [verdict["intervals"][a] for a in arms]
    means = [i["mean"] for i in iv]
    err = [[i["mean"] - i["low"] for i in iv], [i["high"] - i["mean"] for i in iv]]
    colors = ["tab:green" if a == verdict["recommended"] else "tab:blue" for a in arms]
    ax.bar([ARM_LABELS.get(a, a) for a in arms], means, yerr=err, capsize=8, color=colors)
    ax.set(ylabel="target-task score", title="Target score, 95% bootstrap intervals", ylim=(0, 1))
    return _png(fig)


def plot_secondary(summary: dict[str, dict[str, Any]]) -> str:
    fig, axes = _figure(9, 3.2, ncols=3)
    for ax, key, title in zip(
        axes,
        ("heldout_score", "forgetting", "ece"),
        ("held-out-cluster score", "forgetting (drop)", "ECE (calibrated)"),
        strict=True,
    ):
        arms = [a for a in summary if summary[a][key] is not None]
        ax.bar([ARM_LABELS[a] for a in arms], [summary[a][key] for a in arms], color="tab:orange")
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=20)
        if not arms:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def plot_efficiency(rows: Sequence[dict[str, Any]], total: int | None) -> str:
    fig, ax = _figure()
    plotted = False
    for arm in ARM_LABELS:
        points: dict[int, list[float]] = {}
        for r in rows:
            if r["arm"] == arm:
                n = r["labels"] if r["labels"] is not None else (total or 0)
                points.setdefault(n, []).append(r["target_score"])
        if points:
            xs = sorted(points)
            ax.plot(xs, [statistics.fmean(points[x]) for x in xs], "o-", label=ARM_LABELS[arm])
            plotted = True
    ax.set(xscale="log", xlabel="labelled target examples", ylabel="target-task score")
    ax.set_title("Labelled-data efficiency")
    if plotted:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def plot_pareto(data: ReportData) -> str:
    fig, ax = _figure()
    done = [t for t in data.trials if t.get("objectives")]
    if len(data.objectives) >= 2 and done:
        xs = [t["objectives"][data.objectives[0]] for t in done]
        ys = [t["objectives"][data.objectives[1]] for t in done]
        ax.scatter(xs, ys, s=60, color="tab:blue", label="trials")
        front = [data.trials[i] for i in data.pareto]
        fx = [t["objectives"][data.objectives[0]] for t in front]
        fy = [t["objectives"][data.objectives[1]] for t in front]
        order = sorted(range(len(fx)), key=lambda i: fx[i])
        ax.plot(
            [fx[i] for i in order],
            [fy[i] for i in order],
            "o-",
            color="tab:red",
            label="Pareto front",
        )
        ax.set(xlabel=data.objectives[0], ylabel=data.objectives[1])
        ax.legend()
    else:
        metric = data.objective
        vals = [(i, t.get("objectives", {}).get(metric)) for i, t in enumerate(data.trials)]
        vals = [(i, v) for i, v in vals if v is not None]
        ax.plot([i for i, _ in vals], [v for _, v in vals], "o-", ms=8, label=metric)
        ax.set(xlabel="trial", ylabel=metric)
        ax.legend()
    ax.set_title("Trials")
    return _png(fig)


def plot_importances(importances: dict[str, float]) -> str:
    fig, ax = _figure()
    names = sorted(importances, key=lambda n: importances[n])
    ax.barh(names, [importances[n] for n in names], color="tab:purple")
    ax.set(xlabel="importance (fANOVA)", title="Parameter importances")
    if not names:
        ax.text(
            0.5, 0.5, "too few completed trials", ha="center", va="center", transform=ax.transAxes
        )
    return _png(fig)


def _num(x: Any, fmt: str = ".3f") -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return format(x, fmt)
    return html.escape(str(x))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_num(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.verdict{background:#eef7ee;border-left:6px solid #2a7;padding:1em;font-size:1.1em}
.tie{background:#fff6e5;border-left-color:#e90}img{max-width:100%;border:1px solid #eee}
"""


def _evidence_table(evidence: Sequence[dict[str, Any]]) -> str:
    if not evidence:
        return "<p>No direction was measured in this report (`hybridft study` measures all).</p>"
    rows = [
        [e["claim"], e["source"], e["measured"],
         "not measured" if e["ci95"][0] is None else f"[{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]",
         VERDICT_LABELS.get(e["verdict"], e["verdict"])]
        for e in evidence
    ]  # fmt: skip
    details = "".join(
        f"<li><b>{html.escape(e['id'])}</b>: {html.escape(e['detail'])}</li>" for e in evidence
    )
    table = _table(["claim", "source", "measured here", "95% interval", "verdict"], rows,
                   "evidence")  # fmt: skip
    return f"{table}<ul class='sub'>{details}</ul>"


def render(data: ReportData, out: str | Path) -> Path:
    """Write the report page; returns its path."""
    summary = arm_summary(data.arms)
    verdict = data.verdict
    total = max((r["labels"] or 0 for r in data.efficiency if r["labels"]), default=None)
    held = verdict.get("inconclusive", False)
    cls = "verdict" if verdict["significant"] and not held else "verdict tie"
    rec = (
        "none (inconclusive)"
        if held
        else ARM_LABELS.get(verdict["recommended"], str(verdict["recommended"]))
    )
    summary_rows = [
        [
            ARM_LABELS[a],
            s["seeds"],
            verdict["intervals"][a]["mean"] if a in verdict["intervals"] else None,
            (
                f"[{verdict['intervals'][a]['low']:.3f}, {verdict['intervals'][a]['high']:.3f}]"
                if a in verdict["intervals"]
                else None
            ),
            s["heldout_score"],
            s["forgetting"],
            s["ece"],
            None if s["trained_tokens"] is None else f"{s['trained_tokens']:,.0f}",
            None if s["wall_s"] is None else f"{s['wall_s']:.0f}",
        ]
        for a, s in summary.items()
    ]
    diff_rows = [
        [f"{ARM_LABELS.get(verdict['best'])} − {ARM_LABELS.get(o, o)}", d["mean"],
         f"[{d['low']:+.3f}, {d['high']:+.3f}]", "no" if d["low"] <= 0 else "yes"]
        for o, d in verdict["differences"].items()
    ]  # fmt: skip
    seed_rows = [
        [ARM_LABELS[r["arm"]], r["seed"], r["target_score"], r.get("heldout_score"),
         r.get("forgetting"), r.get("ece"), r.get("trained_tokens"), r.get("mlflow_run_id")]
        for r in data.arms
    ]  # fmt: skip
    eff_rows = [
        [ARM_LABELS[r["arm"]], r["labels"] if r["labels"] is not None else "all", r["seed"],
         r["target_score"]]
        for r in sorted(data.efficiency, key=lambda r: (r["arm"], r["labels"] or 10**9))
    ]  # fmt: skip
    trial_rows = [
        [t.get("trial_id"), t.get("status"), *(t.get("params", {}).get(k) for k in data.best_params),
         t.get("objectives", {}).get(data.objective), t.get("trained_tokens")]
        for t in data.trials
    ]  # fmt: skip
    reg = data.registration
    reg_html = (
        f"<p>Registered <b>{html.escape(str(reg.get('version', '')))}</b> (run "
        f"{html.escape(str(reg.get('run', '')))}); gate <b>{html.escape(str(reg.get('gate', '')))}</b>"
        f" — {html.escape(str(reg.get('detail', '')))}</p>"
        if reg
        else "<p>Not registered.</p>"
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>hybridft report: "
        f"{html.escape(data.sweep)}</title><style>{CSS}</style></head><body>",
        f"<h1>Instruction tuning vs SFT vs hybrid</h1><p class='sub'>sweep "
        f"<code>{html.escape(data.sweep)}</code> · space <code>{html.escape(data.space_file)}</code>"
        f" · matched compute: every arm trains the same token budget</p>",
        f"<div class='{cls}'><b>Recommendation: {html.escape(rec)}.</b> "
        f"{html.escape(verdict['text'])}</div>",
        "<h2>Evidence: published directions, measured on this data</h2>",
        _evidence_table(data.evidence),
        "<h2>Arms at matched compute</h2>",
        _table(["arm", "seeds", "target score", "95% interval", "held-out clusters",
                "forgetting", "ECE", "trained tokens", "wall s"], summary_rows, "summary"),
        _table(["difference", "mean", "95% interval", "significant"], diff_rows, "differences"),
        f"<img alt='target scores' src='{plot_scores(verdict)}'>",
        f"<img alt='held-out, forgetting, ECE' src='{plot_secondary(summary)}'>",
        "<h2>Labelled-data efficiency</h2>",
        f"<img alt='efficiency' src='{plot_efficiency(data.efficiency, total)}'>",
        _table(["arm", "labelled examples", "seed", "target score"], eff_rows, "efficiency"),
        "<h2>The search</h2>",
        f"<p>Best hybrid configuration: <code>{html.escape(str(data.best_params))}</code></p>",
        f"<img alt='trials' src='{plot_pareto(data)}'>",
        f"<img alt='importances' src='{plot_importances(data.importances)}'>",
        _table(["trial", "status", *data.best_params, data.objective, "trained tokens"],
               trial_rows, "trials"),
        "<h2>Per seed</h2>",
        _table(["arm", "seed", "target", "held-out", "forgetting", "ECE", "tokens", "MLflow run"],
               seed_rows, "seeds"),
        "<h2>Registration</h2>", reg_html,
        *(f"<p class='sub'>{html.escape(n)}</p>" for n in data.notes),
        "</body></html>",
    ]  # fmt: skip
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


VERDICT_STYLE = {"holds": "green", "does_not_hold": "red", "inconclusive": "yellow"}


def decision_tables(doc: dict[str, Any]) -> list[Any]:
    """For the terminal: the verdict, the arms with their intervals, the Evidence table."""
    from rich.table import Table

    verdict = doc["verdict"]
    style = "yellow" if verdict.get("inconclusive") else "green"
    arms = Table(title=f"arms: {doc['score']} on {doc['target']} (majority-class baseline "
                 f"{doc['majority_baseline']:.3f})")  # fmt: skip
    for col in ("arm", "mean", "95% interval"):
        arms.add_column(col)
    for arm, s in doc["arm_scores"].items():
        arms.add_row(ARM_LABELS.get(arm, arm), f"{s['mean']:.3f}",
                     f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]")  # fmt: skip
    table = Table(title="Evidence: published directions measured on this data")
    for col in ("direction", "source", "measured", "95% interval", "verdict"):
        table.add_column(col, overflow="fold")
    for e in doc.get("evidence", []):
        lo, hi = e["ci95"]
        table.add_row(
            e["id"], e["source"], e["measured"],
            "not measured" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]",
            f"[{VERDICT_STYLE[e['verdict']]}]{VERDICT_LABELS[e['verdict']]}[/]",
        )  # fmt: skip
    return [f"[b {style}]{verdict['text']}[/]", arms, table]
