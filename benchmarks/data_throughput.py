"""Data-layer throughput: ours (read + validate + render + mask + fingerprint) vs HF `datasets`.

Generates N heavy-ish instruction rows (instruction, often an input, a long output) to a temp
JSONL, trains a byte-level BPE on a sample of them (hybridft.model.tiny.train_tokenizer, with the
tiny chat template), then measures, each in its own subprocess so peak RSS is that run's alone:

- ours:  read_examples -> ExampleHasher.tap -> render_examples(completion_only), every row consumed;
- hf:    load_dataset("json") + batched .map applying the same chat template with the same
         tokenizer, truncation and HF's own completion mask (return_assistant_tokens_mask=True);
- ours again at scale x N rows, to show memory stays bounded while the input grows.

Both sides produce the same ids and masks (the totals are compared). Prints the figures, then a
final line that is one JSON object.

    python benchmarks/data_throughput.py                 # N = 100_000, and 10 x N for ours
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


def _write(rows: list[dict], path: Path, copies: int) -> None:
    """Write `copies` distinct variants of each row (a case number keeps every row unique)."""
    with path.open("w", encoding="utf-8") as fh:
        for k in range(copies):
            for row in rows:
                row = {**row, "instruction": f"Case {k}. {row['instruction']}"} if k else row
                fh.write(json.dumps(row) + "\n")


def _cpu_s() -> float:
    """CPU seconds of this process, all threads: a load-robust measure of the work done."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure_ours(data: str, tok_dir: str, max_len: int, batch_size: int) -> dict:
    from transformers import AutoTokenizer

    from hybridft.data.fingerprint import ExampleHasher
    from hybridft.data.reader import read_examples
    from hybridft.data.render import render_examples

    tok = AutoTokenizer.from_pretrained(tok_dir)
    base, cpu = _rss_mb(), _cpu_s()
    start = time.perf_counter()
    hasher = ExampleHasher()
    stream = read_examples([data], fmt="auto")
    rendered = render_examples(
        hasher.tap(stream), tok, loss="completion_only", max_len=max_len, batch_size=batch_size
    )
    rows = tokens = loss_tokens = 0
    for item in rendered:  # consumed and dropped, as a packer writing shards would
        rows += 1
        tokens += len(item.input_ids)
        loss_tokens += int(item.loss_mask.sum())
    fingerprint = hasher.fingerprint(tok, "completion_only")
    seconds = time.perf_counter() - start
    assert stream.report.accepted == rows
    return {
        "rows": rows,
        "seconds": seconds,
        "cpu_seconds": _cpu_s() - cpu,
        "tokens": tokens,
        "loss_tokens": loss_tokens,
        "fingerprint": fingerprint,
        "base_rss_mb": base,
    }


def _measure_hf(data: str, tok_dir: str, max_len: int, batch_size: int, cache: str) -> dict:
    import pyarrow.compute as pc
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
    out = ds.map(tokenize, batched=True, batch_size=batch_size, remove_columns=ds.column_names)
    seconds = time.perf_counter() - start
    cpu = _cpu_s() - cpu
    table = out.data.table
    tokens = pc.sum(pc.list_value_length(table.column("input_ids"))).as_py()
    loss_tokens = pc.sum(pc.list_flatten(table.column("loss_mask"))).as_py()
    return {
        "rows": len(out),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tokens": tokens,
        "loss_tokens": loss_tokens,
        "base_rss_mb": base,
    }


def _child(args: argparse.Namespace) -> None:
    if args.measure == "ours":
        result = _measure_ours(args.data, args.tokenizer, args.max_len, args.batch_size)
    else:
        result = _measure_hf(args.data, args.tokenizer, args.max_len, args.batch_size, args.cache)
    # ru_maxrss is in KiB on Linux: this process's own peak, so each measurement stands alone.
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["rows_per_s"] = result["rows"] / result["seconds"]
    result["rows_per_cpu_s"] = result["rows"] / result["cpu_seconds"]
    print(json.dumps(result))


def _run_child(kind: str, data: Path, tok_dir: Path, args: argparse.Namespace, work: Path) -> dict:
    cache = tempfile.mkdtemp(prefix=f"cache-{kind}-", dir=work)  # fresh: no HF cache reuse
    cmd = [sys.executable, __file__, "--measure", kind, "--data", str(data)]
    cmd += ["--tokenizer", str(tok_dir), "--max-len", str(args.max_len)]
    cmd += ["--batch-size", str(args.batch_size), "--cache", cache]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{kind} measurement failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _show(name: str, r: dict) -> None:
    print(
        f"{name:<12} {r['rows']:>9,} rows {r['seconds']:6.1f} s {r['rows_per_s']:7,.0f} rows/s "
        f"({r['rows_per_cpu_s']:,.0f} rows/cpu-s)  peak RSS {r['peak_rss_mb']:4.0f} MB "
        f"(after imports {r['base_rss_mb']:.0f})  tokens {r['tokens']:,} "
        f"loss tokens {r['loss_tokens']:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="N rows for the comparison")
    parser.add_argument("--scale", type=int, default=10, help="ours again at scale x N (0: skip)")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternate ours / hf this many times, keep the best"
    )
    parser.add_argument("--measure", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return _child(args)

    from hybridft.model.tiny import train_tokenizer

    with tempfile.TemporaryDirectory(prefix="hybridft-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        rows = _rows(args.rows, args.seed)
        data = work / "rows.jsonl"
        _write(rows, data, copies=1)
        sample = (v for row in rows[:5000] for v in row.values())
        tok_dir = work / "tokenizer"
        train_tokenizer(sample, args.vocab_size).save_pretrained(str(tok_dir))
        size_mb = data.stat().st_size / 2**20
        print(f"data: {args.rows:,} rows, {size_mb:.0f} MB ({time.perf_counter() - t0:.0f} s)")

        ours_runs, hf_runs = [], []
        for _ in range(max(args.repeats, 1)):  # alternated, so load drifts hit both sides
            ours_runs.append(_run_child("ours", data, tok_dir, args, work))
            _show("ours", ours_runs[-1])
            hf_runs.append(_run_child("hf", data, tok_dir, args, work))
            _show("hf datasets", hf_runs[-1])
        ours = max(ours_runs, key=lambda r: r["rows_per_s"])
        hf = max(hf_runs, key=lambda r: r["rows_per_s"])
        same = (ours["tokens"], ours["loss_tokens"]) == (hf["tokens"], hf["loss_tokens"])
        print(f"same tokens and loss tokens on both sides: {same}")
        ratio = ours["rows_per_s"] / hf["rows_per_s"]
        cpu_ratio = ours["rows_per_cpu_s"] / hf["rows_per_cpu_s"]
        print(
            f"throughput ours / hf: {ratio:.2f}x wall (target >= 1.0), {cpu_ratio:.2f}x per cpu-s"
        )
        summary = {
            "rows": args.rows,
            "ours_rows_per_s": round(ours["rows_per_s"]),
            "hf_rows_per_s": round(hf["rows_per_s"]),
            "ratio_ours_over_hf": round(ratio, 2),
            "cpu_ratio_ours_over_hf": round(cpu_ratio, 2),
            "load_avg_1m": round(os.getloadavg()[0], 1),
            "cpus": os.cpu_count(),
            "ours_peak_rss_mb": round(ours["peak_rss_mb"]),
            "hf_peak_rss_mb": round(hf["peak_rss_mb"]),
            "same_output": same,
            "tokens": ours["tokens"],
            "fingerprint": ours["fingerprint"],
        }
        if args.scale > 1:
            big = work / "rows-scaled.jsonl"
            _write(rows, big, copies=args.scale)
            data.unlink()
            scaled = _run_child("ours", big, tok_dir, args, work)
            _show(f"ours x{args.scale}", scaled)
            growth = scaled["peak_rss_mb"] / ours["peak_rss_mb"]
            print(f"peak RSS at {args.scale}x the rows: {growth:.2f}x (bounded: streaming)")
            summary |= {
                "scale_rows": scaled["rows"],
                "ours_scale_rows_per_s": round(scaled["rows_per_s"]),
                "ours_scale_peak_rss_mb": round(scaled["peak_rss_mb"]),
                "rss_ratio_scale_over_n": round(growth, 2),
            }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
