#!/usr/bin/env python3
"""Summarise benches/compare.sh runs: median and min-max over repetitions, ratio to the baseline.

usage: summarize.py RESULTS_DIR  (reads RESULTS_DIR/runs/*.json, writes RESULTS_DIR/summary.json,
prints a Markdown table on stdout)
"""
import glob
import json
import os
import statistics
import sys


def get(d, path):
    for k in path.split("."):
        if isinstance(d, list):
            d = d[int(k)] if d else None
        elif isinstance(d, dict):
            d = d.get(k)
        else:
            return None
        if d is None:
            return None
    return d


def best_step(run):
    """The fanout step with the highest achieved deliveries/s within the p99 limit (else the first)."""
    steps = run.get("steps") or []
    ok = [s for s in steps if (get(s, "latency.p99_ms") or 1e18) <= run.get("p99_limit_ms", 100)
          and s.get("lost_deliveries", 0) <= 0.01 * max(1, s.get("expected_deliveries", 1))]
    if not ok:
        return steps[0] if steps else {}
    return max(ok, key=lambda s: s.get("deliveries_per_s", 0))


def half_step(run):
    """The step closest to 50% of the run's saturation (its best deliveries/s within the limit), for the
    issue's "latency at 50% of saturation"."""
    half = [s for s in run.get("steps") or [] if s.get("half_of_best")]
    if half:  # the search ends with a step at half the best rate
        return half[-1]
    best = best_step(run)
    target = 0.5 * (best.get("deliveries_per_s") or 0)
    steps = [s for s in run.get("steps") or [] if s.get("deliveries_per_s")]
    if not steps or target <= 0:
        return {}
    return min(steps, key=lambda s: abs(s["deliveries_per_s"] - target))


# (name, extractor, higher_is_better); the first metric picks the median run for the plots.
METRICS = {
    "fanout": [
        ("max deliveries/s (p99<=limit)", lambda r: r.get("max_deliveries_per_s_within_limit"), True),
        ("p50 ms @best", lambda r: get(best_step(r), "latency.p50_ms"), False),
        ("p99 ms @best", lambda r: get(best_step(r), "latency.p99_ms"), False),
        ("p99.9 ms @best", lambda r: get(best_step(r), "latency.p999_ms"), False),
        ("server CPU-s per 1M deliveries @best", lambda r: best_step(r).get("server_cpu_s_per_million_deliveries"), False),
        ("deliveries/s @~50% sat", lambda r: half_step(r).get("deliveries_per_s"), None),
        ("p50 ms @~50% sat", lambda r: get(half_step(r), "latency.p50_ms"), False),
        ("p99 ms @~50% sat", lambda r: get(half_step(r), "latency.p99_ms"), False),
        ("p99.9 ms @~50% sat", lambda r: get(half_step(r), "latency.p999_ms"), False),
        ("server CPU-s per 1M @~50% sat", lambda r: half_step(r).get("server_cpu_s_per_million_deliveries"), False),
        ("generator recv-thread util @best", lambda r: best_step(r).get("generator_recv_thread_util"), None),
        ("generator publisher-thread util @best", lambda r: best_step(r).get("generator_publisher_thread_util"), None),
        ("generator-bound (1 = the generator may be the limit)", lambda r: int(bool(r.get("generator_bound"))), None),
        ("other processes' cores @best (shared machine)", lambda r: best_step(r).get("other_cores_busy"), None),
        ("generator CPU-s @best", lambda r: best_step(r).get("generator_cpu_s"), None),
    ],
    "idle": [
        ("server bytes/conn idle", lambda r: r.get("server_bytes_per_connection"), False),
        ("server bytes/conn after burst", lambda r: get(r, "burst.server_bytes_per_connection_after_burst"), False),
        ("server bytes/conn after rest", lambda r: get(r, "burst.server_bytes_per_connection_after_rest"), False),
        ("connect errors", lambda r: r.get("connect_errors"), False),
        ("generator CPU-s", lambda r: r.get("generator_cpu_s_total"), None),
    ],
    "churn": [
        ("p99 connect->subscribed ms", lambda r: get(r, "connect_to_subscribed.p99_ms"), False),
        ("p50 connect->subscribed ms", lambda r: get(r, "connect_to_subscribed.p50_ms"), False),
        ("errors", lambda r: (r.get("connect_errors") or 0) + (r.get("subscribe_errors") or 0), False),
        ("server fds after - before", lambda r: (r.get("server_fds_after") or 0) - (r.get("server_fds_before") or 0), False),
        ("server RSS after - before KiB", lambda r: (r.get("server_rss_kb_after") or 0) - (r.get("server_rss_kb_before") or 0), False),
        ("server CPU-s", lambda r: r.get("server_cpu_s"), False),
        ("generator CPU-s", lambda r: r.get("generator_cpu_s"), None),
    ],
    "replay": [
        ("time to last replayed ms", lambda r: r.get("time_to_last_ms"), False),
        ("replayed msgs/s", lambda r: r.get("replay_msgs_per_s"), True),
        ("gaps", lambda r: r.get("gaps"), False),
        ("duplicates", lambda r: r.get("duplicates"), False),
        ("publish acked/s (window 256)", lambda r: r.get("publish_per_s"), True),
        ("generator CPU-s", lambda r: r.get("generator_cpu_s"), None),
    ],
}


def fmt(x):
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.3g}"
    return str(x)


def main():
    out = sys.argv[1]
    groups = {}
    for f in sorted(glob.glob(os.path.join(out, "runs", "*.json"))):
        if os.path.basename(f).startswith("warmup-"):
            continue
        try:
            run = json.load(open(f))
        except Exception as e:  # a failed run leaves no or a partial file
            print(f"skipping {f}: {e}", file=sys.stderr)
            continue
        sc = run.get("scenario")
        if sc == "fanout":
            key = f"fanout {run.get('subscribers')} subscribers {run.get('size')} B"
        elif sc == "idle":
            key = f"idle {run.get('connections')} connections"
        elif sc == "churn":
            key = f"churn {run.get('rate'):g} connects/s"
        elif sc == "replay":
            key = f"replay {run.get('messages')} missed messages"
        else:
            key = sc
        groups.setdefault((key, sc), {}).setdefault(run.get("label") or "?", []).append((f, run))

    summary = {"groups": [], "median_runs": []}
    lines = ["# herald benchmark comparison", "",
             "median over repetitions [min-max]; ratio = median / baseline median", ""]
    for (key, sc), by_label in groups.items():
        lines += [f"## {key}", ""]
        metrics = METRICS[sc]
        table = {}
        for label, runs in by_label.items():
            vals = {}
            for name, fn, _ in metrics:
                xs = [v for v in (fn(r) for _, r in runs) if isinstance(v, (int, float))]
                vals[name] = {"median": statistics.median(xs) if xs else None,
                              "min": min(xs) if xs else None, "max": max(xs) if xs else None, "n": len(xs)}
            table[label] = vals
            # the run whose first metric is the median goes to the plots
            first = metrics[0][1]
            ranked = sorted(runs, key=lambda fr: (first(fr[1]) is None, first(fr[1]) or 0))
            summary["median_runs"].append(ranked[(len(ranked) - 1) // 2][0])
        base = table.get("baseline")
        header = "| server | " + " | ".join(m[0] for m in metrics) + " |"
        lines += [header, "|" + "---|" * (len(metrics) + 1)]
        for label, vals in table.items():
            cells = []
            for name, _, _ in metrics:
                v = vals[name]
                c = fmt(v["median"])
                if v["n"] > 1:
                    c += f" [{fmt(v['min'])}-{fmt(v['max'])}]"
                b = base and base[name]["median"]
                if b and v["median"] is not None and label != "baseline":
                    c += f" ({v['median'] / b:.2f}x)"
                cells.append(c)
                vals[name]["ratio_to_baseline"] = (v["median"] / b) if (b and v["median"] is not None) else None
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        summary["groups"].append({"key": key, "scenario": sc, "servers": table})
    # S4: the highest rate at which every repetition had 0 errors and p99 connect->subscribed <= 100 ms
    churn = {}
    for g in summary["groups"]:
        if g["scenario"] != "churn":
            continue
        rate = float(g["key"].split()[1])
        for label, vals in g["servers"].items():
            ok = vals["errors"]["max"] == 0 and (vals["p99 connect->subscribed ms"]["max"] or 1e9) <= 100
            churn.setdefault(label, []).append((rate, ok, vals["p99 connect->subscribed ms"]["median"]))
    if churn:
        lines += ["## churn: max sustained connects/s (all repetitions 0 errors and p99 <= 100 ms)", "",
                  "| server | max sustained connects/s | highest rate tried | ratio to baseline |", "|---|---|---|---|"]
        best = {l: max([r for r, ok, _ in xs if ok], default=0) for l, xs in churn.items()}
        for label, xs in churn.items():
            b = best.get("baseline")
            ratio = f"{best[label] / b:.2f}x" if b else "-"
            lines.append(f"| {label} | {best[label]:g} | {max(r for r, _, _ in xs):g} | {ratio} |")
        lines.append("")
        summary["churn_max_sustained"] = best
    json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
