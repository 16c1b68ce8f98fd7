"""Write benchmarks/README.md from the results JSONs under benchmarks/results/.

    python -m benchmarks.write_readme              # make bench-readme (make bench's last step)
    python -m benchmarks.write_readme --runs runs/wikipedia_vital_bank
                                                   # first copy that bank's train-v4 / train-lvm
                                                   # reports and deploy.json in

Every number in benchmarks/README.md comes from a JSON in benchmarks/results/, so none can go
stale in prose: each benchmark's section is its description (kept here, free of numbers), the
command that writes its JSON, and tables rendered from that JSON. A benchmark whose JSON is
missing gets a line saying which command writes it. The block between the `numbers` markers in
the top-level README.md (the numbers that matter) is rewritten from the same JSONs.

Measurements that no committed JSON holds (hours-long or GPU runs, earlier sessions) are kept by
hand in benchmarks/EARLIER.md, which the generated README links to.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "benchmarks" / "README.md"
TOP_README = ROOT / "README.md"
START, END = "<!-- numbers:start -->", "<!-- numbers:end -->"
# What --runs copies from runs/<bank>/ (the training reports) into RESULTS, under these names.
RUN_REPORTS = {"twotower_v4/gate.json": "train_v4.json", "lvm/result.json": "train_lvm.json",
               "deploy.json": "deploy.json", "tune_index.json": "tune_index.json"}


class ResultError(ValueError):
    """A results JSON that is missing a key its renderer reads, or is not JSON."""


# --- formatting -----------------------------------------------------------------------------


def num(v: object, fmt: str = ".2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != 0 and abs(v) < 1e-3:  # e.g. a largest difference: keep its magnitude
            return f"{v:.1e}"
        return f"{v:{fmt}}"
    return str(v)


def with_ci(v: float | None, ci: list | None, fmt: str = ".2f") -> str:
    if v is None:
        return "-"
    if not ci or ci[0] is None:
        return num(v, fmt)
    return f"{v:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def diff_ci(d: dict | None, fmt: str = "+.2f") -> str:
    """A paired difference {diff, ci95, significant}: `*` when its CI excludes 0."""
    if not d:
        return "-"
    mark = "*" if d.get("significant") else ""
    lo, hi = d["ci95"]
    return f"{d['diff']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]{mark}"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    def cell(c: object) -> str:  # a | inside a cell (an index_factory string) ends the cell
        return str(c).replace("|", "\\|")

    out = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return out


def dig(d: dict, *keys: str) -> object:
    """d[k1][k2]..., or ResultError naming the missing key."""
    cur: object = d
    for i, k in enumerate(keys):
        if not isinstance(cur, dict) or k not in cur:
            raise ResultError(f"no key {'.'.join(keys[:i + 1])!r}")
        cur = cur[k]
    return cur


def load(d: dict, key: str) -> str:
    """The load average a benchmark recorded, as 'a-b', or '-'."""
    vals = [d.get(k) for k in (f"{key}_at_start", f"{key}_at_end")]
    vals = [v[0] if isinstance(v, list) else v for v in vals if v is not None]
    if not vals:
        return "-"
    return f"{min(vals):.1f}-{max(vals):.1f}" if len(vals) > 1 else f"{vals[0]:.1f}"


# --- generic rendering: any JSON, as key/value tables and tables of records -----------------


def scalar(v: object) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def flatten(rec: dict, prefix: str = "") -> dict[str, str]:
    """One record's cells: nested dicts flattened as a.b, `x` and `x_ci95` merged into one."""
    out: dict[str, str] = {}
    for k, v in rec.items():
        name = f"{prefix}{k}"
        if k.endswith("_ci95"):
            continue
        ci = rec.get(f"{k}_ci95")
        fmt = ".4f" if isinstance(v, float) and abs(v) < 1 else ".2f"
        if isinstance(v, float) and isinstance(ci, list) and len(ci) == 2:
            out[name] = with_ci(v, ci, fmt)
        elif isinstance(v, str) and len(v) > 60:  # a command line or log path: in the JSON
            continue
        elif scalar(v):
            out[name] = num(v, fmt)
        elif isinstance(v, dict) and not prefix:
            out.update(flatten(v, name + "."))
        elif isinstance(v, list) and len(v) <= 4 and all(scalar(x) for x in v):
            out[name] = ", ".join(num(x) for x in v)
    return out


def record_table(rows: list[tuple[str | None, dict]]) -> list[str]:
    cells = [(name, flatten(r)) for name, r in rows]
    cols = list(dict.fromkeys(c for _, f in cells for c in f))
    head = ([""] if rows[0][0] is not None else []) + cols
    return table(head, [([name] if name is not None else []) + [f.get(c, "-") for c in cols]
                        for name, f in cells])


def is_records(v: object) -> bool:
    return isinstance(v, list) and 0 < len(v) <= 60 and all(isinstance(r, dict) for r in v)


def is_named_records(v: object) -> bool:
    return (isinstance(v, dict) and len(v) >= 2 and all(isinstance(r, dict) for r in v.values())
            and all(sum(scalar(x) for x in r.values()) >= 2 for r in v.values()))


def render_generic(d: dict, path: str = "", depth: int = 0) -> list[str]:
    """Scalars as one key/value table; lists of records and dicts of records as tables; other
    dicts recursively (a few levels); long lists (grids, timelines) left to the JSON."""
    lines = []
    flat = [(k, v) for k, v in d.items() if scalar(v) and not (isinstance(v, str) and len(v) > 100)]
    flat += [(k, ", ".join(num(x) for x in v)) for k, v in d.items()
             if isinstance(v, list) and 0 < len(v) <= 4 and all(scalar(x) for x in v)]
    if flat:
        lines += ([f"`{path}`:", ""] if path else []) + table(
            ["key", "value"], [[f"`{k}`", num(v, ".4f" if isinstance(v, float) and abs(v) < 1
                                              else ".2f")] for k, v in flat]) + [""]
    for k, v in d.items():
        name = f"{path}.{k}" if path else k
        if is_records(v):
            lines += [f"`{name}`:", ""] + record_table([(None, r) for r in v]) + [""]
        elif is_named_records(v):
            lines += [f"`{name}`:", ""] + record_table(list(v.items())) + [""]
        elif isinstance(v, dict) and depth < 3:
            lines += render_generic(v, name, depth + 1)
    return lines


# --- one renderer per results JSON ----------------------------------------------------------


def render_train_v4(d: dict) -> list[str]:
    methods = dig(d, "methods")
    ks = [k for k in (10, 50, 100, 500, 1000) if f"recall@{k}" in next(iter(methods.values()))]
    rows = [[name] + [with_ci(m[f"recall@{k}"], m.get(f"recall@{k}_ci95")) for k in ks]
            + [with_ci(m.get("mrr"), m.get("mrr_ci95"), ".3f")] for name, m in methods.items()]
    lines = [f"Split: **{d.get('split', 'test')}**, {num(d.get('test_pairs'))} pairs from "
             f"{num(d.get('test_articles'))} articles. Verdict: **{d['verdict']}**; stage 1 = "
             f"**{d.get('stage1')}**. Gate on {d['metric']}: success >= "
             f"{num(dig(d, 'thresholds', 'success'))}, partial >= "
             f"{num(dig(d, 'thresholds', 'partial'))}.", ""]
    lines += table(["method"] + [f"R@{k}" for k in ks] + ["MRR"], rows)
    vs = d.get("vs_heuristic") or {}
    if vs:
        lines += ["", "v4 minus the heuristic, paired (`*`: the CI excludes 0):", ""]
        lines += table(["metric", "difference [95% CI]", "pairs", "articles"],
                       [[k, diff_ci(v), num(v.get("n")), num(v.get("clusters"))]
                        for k, v in vs.items()])
    mid = d.get("mid_gate")
    if mid:
        lines += ["", f"Mid-gate (val, epoch {mid['epoch']}): {mid['metric']} "
                      f"{num(mid['value'])} against {num(mid['threshold'])}: {mid['status']}."]
    return lines


def render_train_lvm(d: dict) -> list[str]:
    forms = dig(d, "forms")
    ks = list(next(iter(forms.values()))["stage1"])
    rows = [[form] + [f"{num(f['stage1'][k])} -> {num(f['lvm_cross_fitted'][k])}" for k in ks]
            for form, f in forms.items()]
    lines = [f"Split: **val**, {num(d.get('val_pairs'))} contexts (the head is cross-fitted in "
             f"{d.get('folds')} folds by article). Stage 1 -> after the LVM:", ""]
    lines += table(["contexts sent as"] + [k.replace("hit", "Hit") for k in ks], rows)
    gate = dig(d, "gate")
    lines += ["", f"Stage-2 gate: **{'passed' if gate['passed'] else 'refused'}**: "
                  f"{gate['reason']}."]
    tmd = d.get("tmd") or {}
    if tmd:
        lines += ["", "Stage 3's w, chosen on val for each lane source:", ""]
        lines += table(["lanes from", "w", "val Hit@10 after TMD", "domain agreement %",
                        "tagger"],
                       [[src, num(t["w"]), num(t["hit@10"]), num(t.get("domain_agreement")),
                         t.get("tagger", "-")] for src, t in tmd.items()])
    nd = d.get("near_duplicates")
    if nd:
        lines += ["", f"Near-duplicate cut for vector contexts: cos >= {num(nd['dup_cos'])} "
                      f"(highest target-to-context cos on val "
                      f"{num(nd['val_target_cos_max'], '.4f')})."]
    return lines


def render_deploy(d: dict) -> list[str]:
    c = dig(d, "cascade")
    rows = [["stage 1", f"{d['stage1']} ({d.get('verdict')}): {d.get('reason', '')}"],
            ["judged on", f"{dig(d, 'judged_on', 'split')}, "
                          f"{num(dig(d, 'judged_on', 'pairs'))} pairs"],
            ["bank", f"`{d.get('bank')}` {str(d.get('bank_fingerprint', ''))[:19]}..."],
            ["LVM", (d.get("lvm_gate") or {}).get("reason", "none named")]]
    rows += [[f"`cascade.{k}`", f"`{v}`"] for k, v in c.items()]
    idx = d.get("stage1_index")
    if idx:
        rows += [[f"`stage1_index.{k}`", num(v)] for k, v in idx.items()
                 if not isinstance(v, (dict, list))]
    return table(["", "deploy.json"], rows)


def render_recall(d: dict) -> list[str]:
    methods = dig(d, "methods")
    first = next(iter(methods.values()))
    ks = sorted(int(k.split("@")[1]) for k in first
                if k.startswith("recall@") and not k.endswith("_ci95"))
    show = [k for k in ks if k in (1, 10, 50, 100, 500, 1000)] or ks
    extra = [k for k in first if k.split("@")[0] in ("mrr", "ndcg") and not k.endswith("_ci95")]
    rows = [[name] + [with_ci(m.get(f"recall@{k}"), m.get(f"recall@{k}_ci95"), ".1f")
                      for k in show]
            + [with_ci(m.get(k), m.get(f"{k}_ci95"), ".3f") for k in extra]
            for name, m in methods.items()]
    lines = [f"Split: **{d.get('split', 'test')}**, {num(d.get('n'))} pairs from "
             f"{num(d.get('articles'))} articles; 95% CIs resample articles.", ""]
    return lines + table(["method"] + [f"R@{k}" for k in show] + extra, rows)


def render_cascade_eval(d: dict) -> list[str]:
    q = dig(d, "quality")
    rows, tops = [], []
    for form, s in q.items():
        cell = [with_ci(dig(s, st, "hit@10", "value"), dig(s, st, "hit@10", "ci95"))
                for st in ("stage1", "lvm", "tmd")]
        rows.append([form] + cell + [diff_ci(s["tmd"].get("vs_previous", {}).get("hit@10")),
                                     diff_ci(s["tmd"].get("vs_stage1", {}).get("hit@10"))])
        tops.append([form] + [num(s["tmd"][k]["value"], ".3f" if k.startswith("mrr") else ".2f")
                              for k in ("hit@1", "hit@5", "hit@10", "mrr@10")])
    lines = [f"Split: **{d['split']}**, {num(d['n'])} contexts; stage 1 = {d.get('stage1_kind')}; "
             f"article-clustered 95% CIs; `*`: the paired CI excludes 0.", ""]
    lines += table(["contexts sent as", "stage 1 Hit@10", "after LVM", "after TMD (served)",
                    "TMD vs LVM", "cascade vs stage 1"], rows)
    lines += ["", "After TMD:", ""] + table(["contexts sent as", "Hit@1", "Hit@5", "Hit@10",
                                              "MRR@10"], tops)
    notes = d.get("notes") or {}
    rt, nd = notes.get("texts_roundtrip"), notes.get("near_duplicates")
    if rt:
        lines += ["", f"Texts re-embedded against the bank's vectors ({num(rt['rows'])} rows): "
                      f"min cos {rt['min_cos']:.6f}, max |difference| {rt['max_abs_diff']:.1e}."]
    if nd:
        lines += ["", f"Near-duplicates of a vector context's chunks (cos >= {num(nd['dup_cos'])})"
                      f" removed {num(nd['hits_removed'])} of {num(nd['served_hits'])} served "
                      f"hits ({num(nd['contexts_changed'])} contexts)."]
    lat = d.get("latency")
    if lat:
        lines += ["", f"Latency, {d.get('threads')} thread(s), {d.get('cpus')} CPUs (median / "
                      f"p99 ms; batch: per context in batches of {lat.get('batch_size')}):", ""]
        stages = list(lat["single"])
        lines += table(["timing"] + stages,
                       [[way] + [f"{num(lat[way][s]['median_ms'])} / {num(lat[way][s]['p99_ms'])}"
                                 if s in lat[way] else "-" for s in stages]
                        for way in ("single", "batch") if way in lat])
    lines += reference_lines(d.get("reference"))
    return lines


def reference_lines(ref: dict | None) -> list[str]:
    if not ref:
        return []
    ms, issue = ref.get("ms", {}), ref.get("issue_ms", {})
    return ["", "This machine's reference operations in the same run (the serving targets were "
                "set beside the issue machine's):", ""] + table(
        ["operation", "here ms", "issue's machine ms"],
        [[k, num(v), num(issue.get(k))] for k, v in ms.items()])


def render_chaos(d: dict) -> list[str]:
    meas = {"failed_calls": f"{num(d['failed'])} failed of {num(d['calls'])}",
            "full_again_after_both_lvm_s":
                f"{num(dig(d, 'both_lvm', 'degraded_answers'))} degraded, "
                f"{num(dig(d, 'both_lvm', 'failed'))} failed, full again after "
                f"{num(dig(d, 'both_lvm', 'full_again_after_s'))} s",
            "failed_calls_in_swaps": "; ".join(
                f"{s['event']} done after {num(s['done_t'] - s['t'], '.1f')} s: {s['calls']} "
                f"calls, {s['failed']} failed, {s['answers_after_done_naming_the_old_deploy']} "
                f"naming the old deploy after it" for s in d.get("swaps", [])),
            "pss_growth": f"{num(dig(d, 'pss_mb', 'before'), ',.0f')} -> "
                          f"{num(dig(d, 'pss_mb', 'after'), ',.0f')} MiB "
                          f"({100 * d['pss_mb']['growth']:+.1f}%)"}
    rows = [[k, num(t), meas.get(k, "-"), "pass" if d["verdicts"].get(k) else "MISS"]
            for k, t in dig(d, "targets").items()]
    per_s = [r["calls"] for r in d.get("timeline", [])]
    lines = [f"{d.get('callers')} callers, {num(d.get('seconds'), '.0f')} s, contexts as "
             f"{d.get('form')}, {d.get('layout')}; deploy A {dig(d, 'deploys', 'A')}, "
             f"B {d['deploys']['B']} ({d.get('deploy_b_is')}). Machine: {d.get('machine')}.", ""]
    lines += table(["target", "limit", "measured", ""], rows)
    if per_s:
        lines += ["", f"Answered calls per second through it all: {min(per_s)}-{max(per_s)}."]
    lines += ["", "Events (s from the start): " + "; ".join(
        f"{e['t']} {e['event']}" for e in d.get("events", []))]
    return lines


def render_latency(d: dict) -> list[str]:
    lines = [f"Deploy `{d.get('deploy')}`, vectors as input, {d.get('cpus')} CPUs, load average "
             f"{load(d, 'load_avg')} (start-end).", ""]
    rows, curves = [], []
    for name, lay in dig(d, "layouts").items():
        one = dig(lay, "one_search")
        rows.append([name, num(one.get("p50_ms")), num(one.get("p99_ms")),
                     num((lay.get("texts") or {}).get("p50_ms")), num(lay.get("load_avg"), ".1f")
                     if not isinstance(lay.get("load_avg"), list) else f"{lay['load_avg'][0]:.1f}"])
        for c in lay.get("curve", []):
            cpu = c.get("cpu_ms_per_search") or {}
            errors = sum((c.get("errors") or {}).values())
            curves.append([name, num(c["clients"]), num(c["searches_per_s"], ".1f"),
                           num(c.get("p50_ms")), num(c.get("p99_ms")), num(errors),
                           num(sum(v for v in cpu.values() if v is not None))
                           if cpu else "-"])
    lines += table(["layout", "one search p50 ms", "p99 ms", "texts p50 ms (embedding incl.)",
                    "load after"], rows)
    if curves:
        lines += ["", "Concurrent clients (CPU ms per search: all servers and the clients):", ""]
        lines += table(["layout", "clients", "searches/s", "p50 ms", "p99 ms", "errors",
                        "CPU ms per search"], curves)
    ip = d.get("in_process")
    if ip:
        lines += ["", f"The library alone (in process, 1 thread, no gRPC, {num(ip.get('calls'))} "
                      f"searches): p50 {num(ip.get('p50_ms'))} ms, p99 {num(ip.get('p99_ms'))} ms."]
        lines += reference_lines(ip.get("reference"))
    return lines


@dataclass(frozen=True)
class Section:
    file: str
    title: str
    command: str
    about: str
    render: Callable[[dict], list[str]] = render_generic


SECTIONS = [
    Section("train_v4.json", "Stage 1: the v4 checklist's final gate",
            "make train-v4",
            "Every stage-1 query formation the checklist compares, scored by exact search on the "
            "test split with the context's own rows left out; the verdict and what deploy.json "
            "names follow from it.", render_train_v4),
    Section("train_lvm.json", "Stage 2: the LVM reranker's gate (val)",
            "make train-lvm",
            "The LVM head is fitted on val contexts, cross-fitted by article, and deployed only "
            "if it beats stage 1 beyond the CI in every context form; stage 3's w is chosen on "
            "val per lane source.", render_train_lvm),
    Section("deploy.json", "What is deployed", "make train-v4 && make train-lvm",
            "The deploy.json the numbers below were measured with.", render_deploy),
    Section("recall.json", "Stage-1 recall by query formation", "python -m benchmarks.recall",
            "Every stage-1 query formation side by side on the test split: the heuristics, the "
            "trained towers, the oracle and the deployed cascade's final list.", render_recall),
    Section("cascade_eval.json", "The cascade per stage and per context form",
            "python -m benchmarks.cascade_eval",
            "The in-process cascade on the test split, after each stage, for each form a client "
            "can send a context in (texts, vectors, bank rows, and rows with the target's "
            "article struck from stage 1's list), with the library's own latency per stage.",
            render_cascade_eval),
    Section("tmd_eval.json", "Stage 3 alone: the TMD reranker on the heuristic's list",
            "python -m benchmarks.tmd_eval",
            "Does the TMD lane match help on its own? Its weight is fitted on val and judged on "
            "test, over the exp-weighted heuristic's candidates."),
    Section("latency.json", "Served latency and throughput", "python -m benchmarks.latency",
            "The real gRPC serving set on loopback: one search's p50 / p99 from one client, "
            "searches/s at several concurrent clients, text input, and the library alone, beside "
            "this machine's reference operations measured in the same run.", render_latency),
    Section("index.json", "Stage-1 index types", "python -m benchmarks.index",
            "FAISS index types against exact search on the test split's heuristic queries: "
            "build time, memory, containment@500 and one-query latency."),
    Section("shards.json", "Stage 1 across shards", "python -m benchmarks.shards",
            "End-to-end front latency and throughput with stage 1 split across several shard "
            "servers, with each server's peak memory."),
    Section("embed_throughput.json", "Embedding throughput",
            "python -m benchmarks.embed_throughput",
            "Ingest's cached, length-sorted sentence embedding against a plain encoder call on "
            "the same sentences and model."),
    Section("embed_concurrency.json", "Concurrent text embedding in the front",
            "python -m benchmarks.embed_concurrency",
            "Many threads embedding short texts through one encoder: unguarded, behind a lock, "
            "and through the front's batcher."),
    Section("chaos.json", "Chaos: kills and swaps under load", "make chaos",
            "The serving set under concurrent callers while its processes are killed in turn "
            "and its deploy is swapped and swapped back; the targets are the serving issue's.",
            render_chaos),
    Section("lvm_features.json", "Which LVM head features help",
            "python -m benchmarks.lvm_features",
            "The stage-2 head cross-fitted on val for several feature sets, one predictor."),
    Section("long_context.json", "Context length on the long-document bank",
            "python -m benchmarks.long_context",
            "Test pairs with a full long context, the query reading only its last chunks."),
    Section("train_speed.json", "Training cost as the work grows", "make bench-scale",
            "One epoch of the real trainer at the checklist's configuration on synthetic banks "
            "of growing size and context length: pairs/s by phase and peak memory."),
    Section("train_memory.json", "Peak memory of training at scale",
            "python -m benchmarks.train_memory",
            "Peak RSS of one v4 epoch on a large synthetic bank with long contexts."),
    Section("tune_index.json", "Stage 1's ANN index, tuned on val (large banks)",
            "python -m training.tune_index --deploy DEPLOY --pairs PAIRS",
            "The sweep that chose stage 1's approximate index: containment of exact search's "
            "top list on val for each setting, the chosen one measured on test, and how often "
            "the whole cascade's final list equals the exact-stage-1 cascade's."),
    Section("scale.json", "Large banks served beside the default one",
            "python -m benchmarks.latency --scale DEPLOY",
            "Large banks' serving sets measured in the same run as the default deploy, their "
            "latency, throughput and memory given as ratios to it."),
]


def render_section(s: Section, results: Path) -> tuple[list[str], str | None]:
    """A section's lines, and a message when its JSON is missing."""
    path = results / s.file
    made = f"Made by `{s.command}` -> `{s.file}`"
    if s.file in RUN_REPORTS.values():
        src = next(k for k, v in RUN_REPORTS.items() if v == s.file)
        made += f" (copied from `runs/<bank>/{src}` by `make bench`)"
    head = [f"## {s.title}", "", s.about, "", made + "."]
    if not path.exists():
        msg = f"{path}: missing; `{s.command}` writes it"
        return head + ["", f"*Not measured yet: no `benchmarks/results/{s.file}`; "
                           f"`{s.command}` writes it.*", ""], msg
    try:
        data = json.loads(path.read_text())
        created = data.get("created") or data.get("finished")
        body = s.render(data)
    except json.JSONDecodeError as e:
        raise ResultError(f"{path}: not JSON ({e})") from e
    except (ResultError, KeyError, TypeError) as e:
        raise ResultError(f"{path}: {e} (its benchmark's output changed: update the renderer "
                          f"in benchmarks/write_readme.py)") from e
    when = f" Written {created}." if created else ""
    return head[:-1] + [head[-1] + when, ""] + body + [""], None


def render(results: Path = RESULTS) -> tuple[str, list[str]]:
    """The whole benchmarks README and the missing-JSON messages."""
    lines = ["# Measurements", "",
             "Generated by `python -m benchmarks.write_readme` (`make bench-readme`; the last "
             "step of `make bench`) from `benchmarks/results/*.json`: do not edit by hand. "
             "Timings on a shared 2-core machine depend on what else ran; where a benchmark "
             "records its load average it is shown. Measurements without a committed JSON "
             "(long or GPU runs, earlier sessions) are in [EARLIER.md](EARLIER.md).", ""]
    missing = []
    for s in SECTIONS:
        body, msg = render_section(s, results)
        lines += body
        if msg:
            missing.append(msg)
    known = {s.file for s in SECTIONS}
    for path in sorted(results.glob("*.json")):
        if path.name not in known:
            extra = Section(path.name, f"`{path.stem}`", "see the benchmark's module",
                            "A results JSON without a renderer of its own.")
            lines += render_section(extra, results)[0]
    return "\n".join(lines).rstrip() + "\n", missing


def numbers_block(results: Path = RESULTS) -> list[str]:
    """The top README's one table of the numbers that matter (rows whose JSON exists)."""
    rows = []

    def get(file: str, fn: Callable[[dict], list[str]]) -> None:
        path = results / file
        if path.exists():
            try:
                rows.append(fn(json.loads(path.read_text())))
            except (KeyError, TypeError, json.JSONDecodeError) as e:
                raise ResultError(f"{path}: {e!r} (README's numbers block)") from e

    get("train_v4.json", lambda d: [
        "stage 1 Recall@500, v4 / heuristic", "test",
        f"{num(d['methods']['v4']['recall@500'])} / "
        f"{num(d['methods']['heuristic']['recall@500'])}"])
    get("train_v4.json", lambda d: [
        "stage 1 Recall@10, v4 / heuristic", "test",
        f"{num(d['methods']['v4']['recall@10'])} / {num(d['methods']['heuristic']['recall@10'])}"])
    get("cascade_eval.json", lambda d: [
        "cascade Hit@10, contexts as texts (rows)", "test",
        f"{num(d['quality']['texts']['tmd']['hit@10']['value'])} "
        f"({num(d['quality']['rows']['tmd']['hit@10']['value'])})"
        if "rows" in d["quality"] else num(d["quality"]["texts"]["tmd"]["hit@10"]["value"])])
    get("cascade_eval.json", lambda d: [
        "library, one context, p50 / p99 ms", "-",
        f"{num(d['latency']['single']['total']['median_ms'])} / "
        f"{num(d['latency']['single']['total']['p99_ms'])}"])
    get("latency.json", lambda d: [
        "served over gRPC, one search p50 ms: " + " / ".join(d["layouts"]), "-",
        " / ".join(num(v["one_search"]["p50_ms"]) for v in d["layouts"].values())])
    get("latency.json", lambda d: [
        "served, searches/s at 8 clients: " + " / ".join(d["layouts"]), "-",
        " / ".join(num(c["searches_per_s"], ".0f") for v in d["layouts"].values()
                   for c in v.get("curve", []) if c["clients"] == 8)])
    get("chaos.json", lambda d: [
        "chaos: failed calls under kills and swaps", "-", f"{d['failed']} of {num(d['calls'])}"])
    return [START, ""] + table(["what", "split", "value"], rows) + [
        "", "Where they come from, with CIs and, where recorded, the machine's load: "
            "[benchmarks/README.md](benchmarks/README.md).", "", END]


def update_top_readme(path: Path, results: Path) -> bool:
    """Rewrite the numbers block of README.md; False when it has no markers."""
    if not path.exists():
        return False
    text = path.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + "\n".join(numbers_block(results)) + tail)
    return True


def collect_runs(run_dir: Path, results: Path) -> list[str]:
    """Copy a bank's training reports (RUN_REPORTS) into results; the names copied. The tuned
    ANN index's sweep gets deploy.json's `stage1_index` record beside it (the cascade's top-10
    agreement is measured into deploy.json only)."""
    copied = []
    for src, name in RUN_REPORTS.items():
        path = run_dir / src
        if path.exists():
            data = json.loads(path.read_text())  # refuse to commit a broken report
            if name == "tune_index.json" and (run_dir / "deploy.json").exists():
                record = json.loads((run_dir / "deploy.json").read_text()).get("stage1_index")
                if record:
                    data["stage1_index"] = record
            (results / name).write_text(json.dumps(data, indent=2) + "\n")
            copied.append(name)
    return copied


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.write_readme",
                                description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(RESULTS), help="folder of results JSONs")
    p.add_argument("--out", default=str(OUT), help="the README to write")
    p.add_argument("--top-readme", default=str(TOP_README),
                   help="README whose numbers block is rewritten ('none': leave it)")
    p.add_argument("--runs", default=None,
                   help="runs/<bank>: first copy its train-v4 / train-lvm reports and deploy.json "
                        "into the results folder")
    args = p.parse_args(argv)
    results = Path(args.results)
    if not results.is_dir():
        print(f"write_readme: no results folder {results} (run make bench first)",
              file=sys.stderr)
        return 2
    if args.runs:
        copied = collect_runs(Path(args.runs), results)
        print(f"copied from {args.runs}: {', '.join(copied) or 'nothing (no reports there)'}")
    try:
        text, missing = render(results)
        block = args.top_readme != "none" and update_top_readme(Path(args.top_readme), results)
    except ResultError as e:
        print(f"write_readme: {e}", file=sys.stderr)
        return 2
    Path(args.out).write_text(text)
    for msg in missing:
        print(f"note: {msg}", file=sys.stderr)
    print(f"wrote {args.out}" + (f" and the numbers block of {args.top_readme}" if block else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
