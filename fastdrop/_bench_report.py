"""Reading a benchmark document: the summary table, the memory table, the plot, the comparison.

A document is what ``fastdrop bench --json`` writes: ``{"machine", "settings", "results",
"skipped"}``. Ratios: ``x NumPy`` and ``x torch`` are speed-ups in time for the same operation
(the other implementation's seconds over fastdrop's); ``% of copy`` compares throughput, fastdrop's
GB/s (the bytes its operation must move) over the copy's GB/s at the same (n, dtype) in the same run;
the copy writes into a preallocated array, as ``out=`` does, and ``% of alloc. copy`` compares the
allocating call with a copy into a fresh array (``copy_alloc``, CPU only).
PyTorch has no packed-bit mask, so ``x torch`` on a ``_bits`` row compares with its plain op.
"""

from __future__ import annotations

import math

#: The ratios ``compare`` checks, as (summary column, what it means).
COMPARED = (
    ("copy_pct", "fastdrop % of copy"),
    ("out_copy_pct", "fastdrop out= % of copy"),
    ("alloc_copy_pct", "fastdrop % of allocating copy"),
    ("x_numpy", "fastdrop speed-up over NumPy"),
    ("x_torch", "fastdrop speed-up over torch"),
)


def _index(results: list) -> dict:
    return {(r["device"], r["op"], r["n"], r["dtype"], r["impl"]): r for r in results}


def _speedup(by_key: dict, key: tuple, other: str, fastdrop: dict) -> float | None:
    """``other``'s seconds over fastdrop's for the same op; for a ``_bits`` op, an implementation
    without packed bits (PyTorch) is compared through its plain op."""
    found = by_key.get((*key, other))
    if found is None and key[1].endswith("_bits"):
        found = by_key.get((key[0], key[1].removesuffix("_bits"), *key[2:], other))
    return found["seconds"] / fastdrop["seconds"] if found else None


def summary(document: dict) -> list[dict]:
    """One row per (device, op, n, dtype) that has a fastdrop result, in run order."""
    by_key = _index(document["results"])
    rows = []
    for result in document["results"]:
        if result["impl"] != "fastdrop":
            continue
        key = (result["device"], result["op"], result["n"], result["dtype"])
        baseline = "cupy" if result["device"] == "gpu" else "numpy"
        out = by_key.get((*key, "fastdrop_out"))
        alloc_copy = by_key.get((key[0], "copy", key[2], key[3], "copy_alloc"))
        rows.append({
            "device": key[0], "op": key[1], "n": key[2], "dtype": key[3],
            "gbps": result["gbps"],
            "x_numpy": _speedup(by_key, key, baseline, result),
            "x_torch": _speedup(by_key, key, "torch", result),
            "copy_pct": _percent(result.get("copy_ratio")),
            "out_copy_pct": _percent(out.get("copy_ratio")) if out else None,
            "alloc_copy_pct": 100.0 * result["gbps"] / alloc_copy["gbps"] if alloc_copy else None,
            "copy_gbps": result.get("copy_gbps"),
        })
    return rows


def _percent(ratio):
    return None if ratio is None else 100.0 * ratio


def size_label(n: int) -> str:
    return f"2^{n.bit_length() - 1}" if n > 0 and n & (n - 1) == 0 else str(n)


def _cell(value, digits: int, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def _rate(value) -> str:
    """Three significant digits: 0.0143, 2.14, 143."""
    return "-" if value is None else f"{value:#.3g}".rstrip(".")


def _times(value) -> str:
    return "-" if value is None else f"{value:.2f}x" if value < 1 else f"{value:.1f}x"


def _render(header: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    align = [str.ljust if i < 3 else str.rjust for i in range(len(header))]
    lines = ["  ".join(align[i](cell, widths[i]) for i, cell in enumerate(row)) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_summary(rows: list[dict], *, markdown: bool = False) -> str:
    gpu = any(row["device"] == "gpu" for row in rows)
    header = ["op", "n", "dtype", "fastdrop GB/s", "x CuPy" if gpu else "x NumPy", "x torch",
              "% of copy", "out= % of copy", "% of alloc. copy", "copy GB/s"]
    body = [[row["op"], size_label(row["n"]), row["dtype"], _rate(row["gbps"]), _times(row["x_numpy"]),
             _times(row["x_torch"]), _cell(row["copy_pct"], 0, "%"), _cell(row["out_copy_pct"], 0, "%"),
             _cell(row.get("alloc_copy_pct"), 0, "%"), _rate(row["copy_gbps"])] for row in rows]
    return _render(header, body, markdown)


def memory_rows(document: dict) -> list[dict]:
    """Mask state and peak extra memory per (op, impl, dtype), at the largest n measured."""
    largest = {}
    for result in document["results"]:
        if result["op"] == "copy":
            continue
        key = (result["device"], result["op"], result["impl"], result["dtype"])
        if key not in largest or result["n"] > largest[key]["n"]:
            largest[key] = result
    return list(largest.values())


def format_memory(document: dict, *, markdown: bool = False) -> str:
    header = ["op", "impl", "n", "dtype", "mask bytes/element", "peak extra MB", "peak / input size", "measured by"]
    body = []
    for r in memory_rows(document):
        peak = r.get("peak_extra_bytes")
        body.append([r["op"], r["impl"], size_label(r["n"]), r["dtype"], _cell(r["mask_bytes_per_element"], 3),
                     _cell(None if peak is None else peak / 2**20, 1),
                     _cell(r.get("peak_extra_per_input_byte"), 2, "x"), r.get("peak_method") or "-"])
    return _render(header, body, markdown)


def format_machine(machine: dict) -> str:
    env = ", ".join(f"{name}={value}" for name, value in machine.get("env", {}).items())
    versions = ", ".join(f"{name} {machine[name]}" for name in ("fastdrop", "numpy", "numba", "torch", "cupy")
                         if machine.get(name))
    features = ", ".join(filter(None, [machine.get("llvm_cpu"), "AVX-512" if machine.get("avx512") else "no AVX-512"]))
    text = (f"{machine.get('cpu')} ({features}), {machine.get('cores')} cores, "
            f"OPENBLAS_CORETYPE={machine.get('openblas_coretype') or 'unset'}; numba threading layer "
            f"{machine.get('numba_threading_layer')}, {machine.get('numba_threads')} threads"
            f"{'; ' + env if env else ''}; load average {machine.get('load_average')}; {versions}; "
            f"{machine.get('date')}")
    if machine.get("gpu"):
        text += f"; GPU {machine['gpu']}"
    return text


def busy_warning(machine: dict) -> str:
    """A line saying the timings are suspect when other work competed for the cores."""
    cores = machine.get("cores") or 1
    before = (machine.get("load_average_start") or [0.0])[0]
    after = (machine.get("load_average") or [0.0])[0]  # counts this run's own threads too
    if before <= 0.5 * cores and after <= cores + 0.5:
        return ""
    return (f"warning: load average {before} before and {after} after measuring, on {cores} cores: other "
            "work competed for the cores, so these timings are noisy (parallel kernels most of all)")


def format_skipped(document: dict) -> str:
    """Rows that could not run here, one line per (implementation, reason)."""
    grouped = {}
    for entry in document.get("skipped", []):
        grouped.setdefault((entry["impl"], entry["reason"]), []).append(f"{entry['op']} {entry['dtype']}")
    lines = [f"  {impl} ({', '.join(dict.fromkeys(rows))}): {reason}" for (impl, reason), rows in grouped.items()]
    return "skipped:\n" + "\n".join(lines) if lines else ""


# --- regression check --------------------------------------------------------------------------


def compare(old: dict, new: dict, *, tolerance: float = 0.2) -> tuple[list[dict], list[dict]]:
    """Every ratio present in both documents, and those that got more than ``tolerance`` worse
    (new < (1 - tolerance) * old). Ratios, not GB/s, so that a busier or different machine of the
    same kind still compares; both runs should still come from one machine."""
    old_rows = {(r["device"], r["op"], r["n"], r["dtype"]): r for r in summary(old)}
    checked = []
    for row in summary(new):
        before = old_rows.get((row["device"], row["op"], row["n"], row["dtype"]))
        if before is None:
            continue
        for column, meaning in COMPARED:
            if row[column] is None or before[column] is None or before[column] <= 0:
                continue
            change = row[column] / before[column]
            checked.append({"op": row["op"], "n": row["n"], "dtype": row["dtype"], "device": row["device"],
                            "ratio": meaning, "old": before[column], "new": row[column], "change": change,
                            "regressed": change < 1.0 - tolerance})
    return checked, [entry for entry in checked if entry["regressed"]]


def format_comparison(checked: list[dict], regressions: list[dict], tolerance: float) -> str:
    header = ["op", "n", "dtype", "ratio", "old", "new", "change", ""]
    body = [[c["op"], size_label(c["n"]), c["dtype"], c["ratio"], _cell(c["old"], 2), _cell(c["new"], 2),
             _cell(100 * (c["change"] - 1), 0, "%"), "REGRESSION" if c["regressed"] else ""] for c in checked]
    verdict = (f"{len(regressions)} of {len(checked)} ratios more than {tolerance:.0%} worse than before"
               if regressions else f"no ratio more than {tolerance:.0%} worse ({len(checked)} compared)")
    return _render(header, body, False) + "\n" + verdict


# --- plot --------------------------------------------------------------------------------------


def plot(document: dict, path: str) -> None:
    """Log-log GB/s against n, one panel per op, a line per implementation and dtype, the copy
    as a black line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = document["results"]
    ops = [op for op in dict.fromkeys(r["op"] for r in results) if op != "copy"]
    dtypes = list(dict.fromkeys(r["dtype"] for r in results))
    styles = dict(zip(dtypes, ["-", "--", ":", "-."]))
    columns = min(3, max(1, len(ops)))
    rows = max(1, math.ceil(len(ops) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False)
    colors = {}
    for panel, op in zip(axes.flat, ops):
        for dtype in dtypes:
            copy = sorted((r["n"], r["gbps"]) for r in results if r["op"] == "copy" and r["impl"] == "copy"
                          and r["dtype"] == dtype)
            if copy:
                panel.plot(*zip(*copy), color="black", linestyle=styles[dtype], linewidth=2, label=f"copy {dtype}")
            one_thread = sorted((r["n"], r["gbps"]) for r in results if r["op"] == "copy" and r["impl"] == "copyto"
                                and r["dtype"] == dtype)
            if one_thread:
                panel.plot(*zip(*one_thread), color="gray", linestyle=styles[dtype], linewidth=1,
                           label=f"np.copyto (1 thread) {dtype}")
            for impl in dict.fromkeys(r["impl"] for r in results if r["op"] == op):
                points = sorted((r["n"], r["gbps"]) for r in results
                                if r["op"] == op and r["impl"] == impl and r["dtype"] == dtype)
                if not points:
                    continue
                color = colors.setdefault(impl, f"C{len(colors)}")
                panel.plot(*zip(*points), color=color, linestyle=styles[dtype], marker="o", markersize=3,
                           label=f"{impl} {dtype}")
        panel.set_xscale("log", base=2)
        panel.set(yscale="log", title=op, xlabel="elements", ylabel="GB/s")
        panel.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda n, _: size_label(int(n))))
        panel.grid(True, which="major", alpha=0.3)
        panel.legend(fontsize=7)
    for panel in list(axes.flat)[len(ops):]:
        panel.set_visible(False)
    machine = document.get("machine", {})
    figure.suptitle(f"fastdrop throughput, {machine.get('cpu', '')} ({machine.get('date', '')})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
