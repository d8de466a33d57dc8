"""Data-layer throughput, both sides materialising every row: ours (what a training job runs) vs HF.

Generates N heavy-ish instruction rows (instruction, often an input, a long output) to a temp
JSONL, trains a byte-level BPE on a sample of them (hybridft.model.tiny.train_tokenizer, with the
tiny chat template), then measures, each in its own subprocess so peak RSS is that run's alone:

- ours: ``train.prepare.render_source``, the function a training job calls per source: read +
  validate + render (completion-only mask) + fingerprint, every row's ids and mask kept (in
  memory, as the job then packs them);
- hf:   ``load_dataset("json")`` + batched ``.map`` applying the same chat template with the same
  tokenizer, truncation and HF's own completion mask (``return_assistant_tokens_mask=True``),
  every row's ids and mask kept (its Arrow cache on disk, a fresh cache per run). HF does no
  validation and no fingerprint.

Both sides then write their rows (outside the timed part, after peak RSS is read) and the
parent compares them row by row: it exits 1 naming the first row whose ids or mask differ.
Prints the figures, then a final line that is one JSON object.

    python benchmarks/data_throughput.py                 # N = 100_000 (about 3 min on 2 cores)
    python benchmarks/data_throughput.py --rows 5000     # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HF_BATCH = 512  # render_examples' default batch, which render_source uses
SYLLABLES = "ka to ri ne sa mo lu pe di go ve ba chi ron tel mar is en al or un de".split()


def _lexicon(rng: random.Random, size: int = 1500) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))))
    return sorted(words)


def _sentence(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choices(words, k=n)).capitalize() + "."


def _rows(n: int, seed: int) -> list[dict]:
    """Instruction rows of ~100-200 words: the long-ish answers instruction suites carry."""
    rng = random.Random(seed)
    words = _lexicon(rng)
    rows = []
    for _ in range(n):
        row = {"instruction": _sentence(rng, words, rng.randint(8, 20))}
        if rng.random() < 0.7:
            row["input"] = " ".join(_sentence(rng, words, 12) for _ in range(rng.randint(2, 5)))
        row["output"] = " ".join(_sentence(rng, words, 14) for _ in range(rng.randint(3, 6)))
        rows.append(row)
    return rows


def _write(rows: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def _cpu_s() -> float:
    """CPU seconds of this process, all threads: a load-robust measure of the work done."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure_ours(data: str, tok_dir: str, max_len: int, work: str) -> tuple[dict, tuple]:
    from transformers import AutoTokenizer

    from hybridft.specs import DataSpec, SourceSpec
    from hybridft.train.prepare import render_source

    tok = AutoTokenizer.from_pretrained(tok_dir)
    spec = DataSpec(
        sources={"bench": SourceSpec(paths=[data], kind="instruction")},
        rejects_dir=str(Path(work) / "rejects"),
        max_len=max_len,
    )
    base, cpu = _rss_mb(), _cpu_s()
    start = time.perf_counter()
    source, report = render_source("bench", spec, tok)
    seconds = time.perf_counter() - start
    assert report.accepted == len(source.ids)
    result = {
        "rows": len(source.ids),
        "seconds": seconds,
        "cpu_seconds": _cpu_s() - cpu,
        "fingerprint": source.fingerprint,
        "base_rss_mb": base,
    }
    return result, (source.ids, source.masks)


def _measure_hf(data: str, tok_dir: str, max_len: int, cache: str) -> tuple[dict, tuple]:
    from datasets import load_dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)

    def tokenize(batch: dict) -> dict:
        convs = [
            [
                {"role": "user", "content": f"{i}\n\n{x}" if x and x.strip() else i},
                {"role": "assistant", "content": o},
            ]
            for i, x, o in zip(batch["instruction"], batch["input"], batch["output"], strict=True)
        ]
        enc = tok.apply_chat_template(
            convs,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            truncation=True,
            max_length=max_len,
        )
        return {"input_ids": enc["input_ids"], "loss_mask": enc["assistant_masks"]}

    base, cpu = _rss_mb(), _cpu_s()
    start = time.perf_counter()
    ds = load_dataset("json", data_files=data, split="train", cache_dir=cache)
    out = ds.map(tokenize, batched=True, batch_size=HF_BATCH, remove_columns=ds.column_names)
    seconds = time.perf_counter() - start
    result = {
        "rows": len(out),
        "seconds": seconds,
        "cpu_seconds": _cpu_s() - cpu,
        "base_rss_mb": base,
    }
    table = out.data.table
    return result, (table.column("input_ids"), table.column("loss_mask"))


def _flat(column: object) -> tuple[np.ndarray, np.ndarray]:
    """(row lengths, concatenated values) of a list of arrays or an Arrow list column."""
    if isinstance(column, list):
        return np.array([len(x) for x in column]), np.concatenate(column)
    import pyarrow.compute as pc

    return pc.list_value_length(column).to_numpy(), pc.list_flatten(column).to_numpy()


def _dump(path: str, ids: object, masks: object) -> dict:
    """Every row's ids and mask to ``path`` (.npz); returns the token and loss-token totals."""
    id_lengths, flat_ids = _flat(ids)
    mask_lengths, flat_masks = _flat(masks)
    np.savez(
        path,
        id_lengths=id_lengths,
        ids=flat_ids.astype(np.int32),
        mask_lengths=mask_lengths,
        masks=flat_masks.astype(np.int8),
    )
    return {"tokens": int(id_lengths.sum()), "loss_tokens": int(flat_masks.sum())}


def _child(args: argparse.Namespace) -> None:
    if args.measure == "ours":
        result, (ids, masks) = _measure_ours(args.data, args.tokenizer, args.max_len, args.cache)
    else:
        result, (ids, masks) = _measure_hf(args.data, args.tokenizer, args.max_len, args.cache)
    # ru_maxrss is in KiB on Linux: this process's own peak, so each measurement stands alone;
    # read before the rows are written out for the comparison.
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["rows_per_s"] = result["rows"] / result["seconds"]
    result["rows_per_cpu_s"] = result["rows"] / result["cpu_seconds"]
    if args.dump:
        result |= _dump(args.dump, ids, masks)
    print(json.dumps(result))


def _run_child(
    kind: str, data: Path, tok_dir: Path, args: argparse.Namespace, work: Path, dump: str = ""
) -> dict:
    cache = tempfile.mkdtemp(prefix=f"cache-{kind}-", dir=work)  # fresh: no HF cache reuse
    cmd = [sys.executable, __file__, "--measure", kind, "--data", str(data)]
    cmd += ["--tokenizer", str(tok_dir), "--max-len", str(args.max_len), "--cache", cache]
    cmd += ["--dump", dump] if dump else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{kind} measurement failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def first_difference(ours_path: Path, hf_path: Path) -> str | None:
    """None when both sides wrote the same ids and mask for every row, else what differs first."""
    ours, hf = np.load(ours_path), np.load(hf_path)
    for name, lengths in (("ids", "id_lengths"), ("masks", "mask_lengths")):
        la, lb = ours[lengths], hf[lengths]
        if la.size != lb.size:
            return f"row counts differ: ours {la.size:,}, hf {lb.size:,}"
        longer = np.flatnonzero(la != lb)
        if longer.size:
            i = int(longer[0])
            return (
                f"{longer.size:,} rows differ in {name} length; first: row {i} "
                f"(ours {la[i]} tokens, hf {lb[i]})"
            )
        unequal = np.flatnonzero(ours[name] != hf[name])
        if unequal.size:
            starts = np.concatenate([[0], np.cumsum(la)[:-1]])
            rows = np.searchsorted(starts, unequal, side="right") - 1
            i, at = int(rows[0]), int(unequal[0] - starts[rows[0]])
            return (
                f"{np.unique(rows).size:,} rows differ in {name}; first: row {i}, token {at} "
                f"(ours {ours[name][unequal[0]]}, hf {hf[name][unequal[0]]})"
            )
    return None


def _show(name: str, r: dict) -> None:
    print(
        f"{name:<12} {r['rows']:>9,} rows {r['seconds']:6.1f} s {r['rows_per_s']:7,.0f} rows/s "
        f"({r['rows_per_cpu_s']:,.0f} rows/cpu-s)  peak RSS {r['peak_rss_mb']:4.0f} MB "
        f"(after imports {r['base_rss_mb']:.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="N rows for the comparison")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternate ours / hf this many times, keep the best"
    )
    parser.add_argument("--measure", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--dump", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return _child(args)

    from hybridft.model.tiny import train_tokenizer

    with tempfile.TemporaryDirectory(prefix="hybridft-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        rows = _rows(args.rows, args.seed)
        data = work / "rows.jsonl"
        _write(rows, data)
        sample = (v for row in rows[:5000] for v in row.values())
        tok_dir = work / "tokenizer"
        train_tokenizer(sample, args.vocab_size).save_pretrained(str(tok_dir))
        size_mb = data.stat().st_size / 2**20
        print(f"data: {args.rows:,} rows, {size_mb:.0f} MB ({time.perf_counter() - t0:.0f} s)")

        ours_runs, hf_runs = [], []
        dumps = {"ours": work / "ours.npz", "hf": work / "hf.npz"}
        for i in range(max(args.repeats, 1)):  # alternated, so load drifts hit both sides
            for kind, runs in (("ours", ours_runs), ("hf", hf_runs)):
                dump = str(dumps[kind]) if i == 0 else ""  # the rows are the same every time
                runs.append(_run_child(kind, data, tok_dir, args, work, dump))
                _show("ours" if kind == "ours" else "hf datasets", runs[-1])
        tokens = {
            k: (r[0]["tokens"], r[0]["loss_tokens"])
            for k, r in (("ours", ours_runs), ("hf", hf_runs))
        }
        print(f"tokens, loss tokens: ours {tokens['ours']}, hf {tokens['hf']}")
        difference = first_difference(dumps["ours"], dumps["hf"])
        if difference is not None:
            sys.exit(f"FAIL: ours and hf produced different rows: {difference}")
        print(f"same ids and mask on every one of the {ours_runs[0]['rows']:,} rows")
        ours = max(ours_runs, key=lambda r: r["rows_per_s"])
        hf = max(hf_runs, key=lambda r: r["rows_per_s"])
        ratio = ours["rows_per_s"] / hf["rows_per_s"]
        cpu_ratio = ours["rows_per_cpu_s"] / hf["rows_per_cpu_s"]
        print(
            f"throughput ours / hf: {ratio:.2f}x wall (target >= 1.0), {cpu_ratio:.2f}x per cpu-s"
        )
        summary = {
            "benchmark": "data_throughput",
            "rows": args.rows,
            "ours_rows_per_s": round(ours["rows_per_s"]),
            "hf_rows_per_s": round(hf["rows_per_s"]),
            "ratio_ours_over_hf": round(ratio, 2),
            "cpu_ratio_ours_over_hf": round(cpu_ratio, 2),
            "ours_peak_rss_mb": round(ours["peak_rss_mb"]),
            "hf_peak_rss_mb": round(hf["peak_rss_mb"]),
            "same_rows": True,
            "tokens": tokens["ours"][0],
            "loss_tokens": tokens["ours"][1],
            "fingerprint": ours["fingerprint"],
            "load_avg_1m": round(os.getloadavg()[0], 1),
            "cpus": os.cpu_count(),
            "seconds": round(time.perf_counter() - t0),
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
