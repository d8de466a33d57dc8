"""The terminal table of an evaluation: ``hybridft eval`` prints it."""

from __future__ import annotations

from rich.table import Table

from hybridft.evaluate.run import EvalResult


def eval_table(result: EvalResult) -> Table:
    """Per task: scores, calibration (ECE before -> after temperature), robustness, leakage."""

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    table = Table(title=f"eval: {result.model_dir}")
    for col in ("task", "n", "accuracy", "exact match", "F1", "ECE raw->cal", "Brier", "spread"):
        table.add_column(col)
    table.add_column("clean / dirty")
    for name, t in result.tasks.items():
        cal = t.calibration or {}
        ece = f"{cal['ece_raw']:.3f}->{cal['ece']:.3f}" if cal else "-"
        spread = num(t.robustness["spread"]) if t.robustness else "-"
        leak = t.leakage or {}
        split = f"{num(leak.get('clean'))} / {num(leak.get('dirty'))}" if leak else "-"
        table.add_row(
            name, str(t.n), num(t.accuracy), num(t.exact_match), num(t.f1),
            ece, num(cal.get("brier")), spread, split,
        )  # fmt: skip
    table.add_row("[b]score[/]", "", f"[b]{result.headline:.3f}[/]", *[""] * 6)
    notes = []
    if result.leakage:
        leak = result.leakage
        scope = ", ".join(leak["target_sources"] or ["all eval sets"])
        notes.append(
            f"leakage shield: {leak['n_dirty']}/{leak['n_eval']} eval rows overlap "
            f"{leak['n_train']} train rows ("
            + ", ".join(f"{k} {v}" for k, v in leak["counts"].items())
            + f"); contamination {leak['contamination']:.3f} on {scope}, "
            f"{leak['contamination_all']:.3f} on every eval row"
        )
    if result.graph:
        g = result.graph
        held = (
            f"{num(g['heldout_score'])} over {', '.join(g['heldout_tasks'])}"
            if g["heldout_tasks"]
            else "none scored (every scored task's cluster was trained on)"
        )
        notes.append(
            f"held-out clusters (FLAN): {held}"
            + (f"; forgetting {g['forgetting']:+.3f}" if g.get("forgetting") is not None else "")
        )
    if notes:
        table.caption = "\n".join(notes)
    return table
