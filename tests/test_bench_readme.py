"""benchmarks/README.md is rendered from results JSONs: a number lands in its table, and a
missing or broken JSON says which file and which command."""

import json
from pathlib import Path

from benchmarks.write_readme import END, START, main, render

GATE = {
    "verdict": "success", "metric": "recall@500", "stage1": "v4", "split": "test",
    "test_pairs": 12, "test_articles": 5, "thresholds": {"success": 93.0, "partial": 91.6},
    "methods": {
        "v4": {"recall@10": 61.7331, "recall@10_ci95": [59.4, 64.0],
               "recall@500": 94.1334, "recall@500_ci95": [93.1, 95.1], "mrr": 0.3652},
        "heuristic": {"recall@10": 54.1794, "recall@10_ci95": [51.8, 56.5],
                      "recall@500": 91.9862, "recall@500_ci95": [90.8, 93.1], "mrr": 0.3149},
    },
    "vs_heuristic": {"recall@500": {"diff": 2.1472, "ci95": [1.43, 2.89], "n": 12,
                                    "clusters": 5, "significant": True}},
}


def write(folder: Path, name: str, data: dict) -> None:
    (folder / name).write_text(json.dumps(data))


def test_a_number_lands_in_its_table_and_a_missing_json_is_named(tmp_path):
    write(tmp_path, "train_v4.json", GATE)
    text, missing = render(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| v4 |"))
    assert "94.13 [93.10, 95.10]" in row
    assert "+2.15 [+1.43, +2.89]*" in text
    # Every other benchmark is missing: the README and the message say which command writes it.
    assert "*Not measured yet: no `benchmarks/results/recall.json`; " \
           "`python -m benchmarks.recall` writes it.*" in text
    assert any("recall.json: missing; `python -m benchmarks.recall` writes it" in m
               for m in missing)
    assert not any("train_v4.json" in m for m in missing)


def test_the_top_readme_block_is_rewritten_and_a_broken_json_is_refused(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    write(results, "train_v4.json", GATE)
    top = tmp_path / "README.md"
    top.write_text(f"intro\n{START}\nold numbers\n{END}\noutro\n")
    out = tmp_path / "BENCH.md"
    assert main(["--results", str(results), "--out", str(out), "--top-readme", str(top)]) == 0
    block = top.read_text()
    assert block.startswith("intro\n") and block.endswith("outro\n")
    assert "old numbers" not in block and "94.13 / 91.99" in block
    assert "recall.json: missing" in capsys.readouterr().err

    write(results, "cascade_eval.json", {"split": "test"})  # no 'quality': a changed benchmark
    assert main(["--results", str(results), "--out", str(out), "--top-readme", "none"]) == 2
    err = capsys.readouterr().err
    assert "cascade_eval.json" in err and "'quality'" in err
    assert main(["--results", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no results folder" in capsys.readouterr().err


def test_the_committed_readmes_match_the_committed_results():
    """benchmarks/README.md and README.md's numbers block are what the committed JSONs render:
    after changing a results JSON, run `make bench-readme`."""
    from benchmarks.write_readme import OUT, RESULTS, TOP_README, numbers_block

    text, _ = render(RESULTS)
    assert OUT.read_text() == text, "benchmarks/README.md is stale: run make bench-readme"
    top = TOP_README.read_text()
    block = top[top.index(START):top.index(END) + len(END)]
    assert block == "\n".join(numbers_block(RESULTS)), \
        "README.md's numbers are stale: run make bench-readme"
