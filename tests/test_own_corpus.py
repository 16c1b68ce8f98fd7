"""A corpus from another domain (kitchen notes, written here) through the whole path a new user
runs: `make data CORPUS=...` -> `make train-v4 BANK=...` -> `make train-lvm BANK=...` ->
`make serve BANK=...` -> `make query BANK=...`, as the commands those targets run, with the real
encoder, smoke-size epochs and a real gRPC server on a free port. The corpus repeats sentences
across documents, has short and long documents, one of a single sentence, and non-ASCII text.
Also: how a profile is chosen for a bank, and the gates relative to the heuristic."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cascade.bank import load_bank
from cascade.pairs import load_pairs
from serving.harness import ServingSet, free_port
from training.checklist import choose_profile
from training.config import RelativeGates, load_config, relative_to_heuristic

REPO = Path(__file__).resolve().parent.parent
ENV = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}

DISHES = ["crème brûlée", "jalapeño salsa", "smørrebrød", "味噌汁 (miso soup)", "Ελληνική σαλάτα",
          "pão de queijo", "bœuf bourguignon", "käsespätzle", "piñón cookies", "crêpes"]
INGREDIENTS = ["shallots", "leeks", "fennel", "celeriac", "parsnips", "chickpeas", "lentils",
               "sorrel", "tarragon", "saffron", "cardamom", "anchovies", "capers", "quinces",
               "chestnuts", "buckwheat", "rhubarb", "gooseberries", "kohlrabi", "okra"]
ACTIONS = ["Dice the {i} finely and sweat them in butter for {n} minutes.",
           "Toast the {i} in a dry pan until they smell nutty, about {n} minutes.",
           "Simmer the {i} with a ladle of stock for {n} minutes, stirring now and then.",
           "Fold the {i} into the batter and let it rest for {n} minutes.",
           "Roast the {i} at {t} degrees until the edges turn brown.",
           "Season the {i} with salt, then leave them in a colander for {n} minutes.",
           "Blend the {i} with lemon juice until the purée is smooth.",
           "Layer the {i} in a buttered dish and bake at {t} degrees for {n} minutes.",
           "Pickle the {i} in cider vinegar with {n} peppercorns overnight.",
           "Grill the {i} over high heat and brush them with oil every {n} minutes."]
OPENING = "Wash your hands and clear the counter before you start."  # repeated across notes
CLOSING = "Serve at once, with bread on the side."


def kitchen_corpus(path: Path, notes: int = 72, seed: int = 21) -> None:
    """One JSONL line per kitchen note: 1 to 14 sentences, many opening with the same
    sentence, a few with the same first two, one of a single sentence."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for n in range(notes):
            dish = DISHES[n % len(DISHES)]
            length = 1 if n == 7 else rng.choice([2, 3, 4, 5, 6, 8, 14])
            sentences = [f"Note {n}: how we make {dish} in kitchen {n // 10}."]
            for j in range(length - 1):
                ingredient = INGREDIENTS[(n * 7 + j * 3) % len(INGREDIENTS)]
                sentences.append(ACTIONS[(n + j) % len(ACTIONS)].format(
                    i=ingredient, n=2 + (n * 5 + j * 3) % 41, t=150 + 5 * ((n * 3 + j) % 21)))
            if n % 3 == 0 and length > 1:
                sentences[0] = OPENING  # the same one-sentence context in many notes
            if n % 12 == 1 and length > 2:
                sentences[:2] = [OPENING, CLOSING]  # the same two-sentence context
            if n % 5 == 2 and length > 3:
                sentences[-1] = CLOSING
            f.write(json.dumps({"id": f"note-{n:03d}", "title": f"{dish} ({n})",
                                "text": " ".join(sentences), "topic": "Food"},
                               ensure_ascii=False) + "\n")


def run(argv: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", *argv], cwd=cwd, capture_output=True, text=True,
                       env=ENV, timeout=timeout)
    assert r.returncode == 0, (argv, r.stdout[-3000:], r.stderr[-3000:])
    return r


def test_own_corpus_from_jsonl_to_a_served_answer(tmp_path):
    corpus = tmp_path / "kitchen.jsonl"
    kitchen_corpus(corpus)
    notes = [json.loads(x)["text"] for x in corpus.read_text(encoding="utf-8").splitlines()]
    assert sum(x.startswith(OPENING) for x in notes) > 10 and min(map(len, notes)) < 60
    bank_path = "artifacts/kitchen_bank.npz"
    # make data CORPUS=kitchen.jsonl
    run(["training.ingest", "--corpus", str(corpus), "--out", bank_path, "--no-progress"],
        tmp_path)
    bank = load_bank(tmp_path / bank_path)
    assert bank.dim == 384 and any("é" in bank.text(r) for r in range(bank.n))

    # make train-v4 BANK=...: the default recipe at smoke size, gates from the heuristic. A
    # larger share of the 72 notes goes to val and test, so each clears pre-flight's minimum.
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({
        "bank": bank_path, "v3_config": "smoke_v3.yaml", "v4_config": "v4_default.yaml",
        "v3_expand": {"stride": 1, "context_len": 8},
        "v4_expand": {"target_pairs": 1000, "seed": 42, "train_split": 0.4, "test_split": 0.3},
        "epochs": 2, "mine_schedule": "0-1:none;2-2:8@0.3-0.9", "gates": "heuristic"}))
    r = run(["training.checklist", "--profile", str(profile)], tmp_path)
    out = r.stdout
    # The repeated openings made val/test contexts equal to train contexts: dropped, not a
    # blocker, and said so.
    pairs_path = tmp_path / "artifacts/twotower/kitchen_bank/pairs_v4.npz"
    manifest = json.loads(pairs_path.with_suffix(".json").read_text())
    dropped = manifest["duplicate_context_pairs_dropped"]
    assert sum(dropped.values()) > 0 and "whose context equals a train context" in out
    assert "0 blocker(s)" in out and "GO" in out
    pairs = load_pairs(pairs_path, bank)
    for side in ("val", "test"):
        part = pairs.side(side)
        assert len(part) >= 50 and len(set(part.articles(bank).tolist())) >= 10
    # Gates relative to the heuristic on this bank's val split, each with its source.
    assert "4a. Gates relative to the heuristic" in out
    assert "the exp-weighted heuristic's recall@" in out and "Δ on val" in out
    relative = load_config(tmp_path / "runs/kitchen_bank/v4_relative.yaml")
    assert relative.gates.success == pytest.approx(min(100.0, relative.gates.mid + 5.0))
    assert relative.gates.partial == pytest.approx(min(100.0, relative.gates.mid + 1.0))
    deploy_path = tmp_path / "runs/kitchen_bank/deploy.json"
    deploy = json.loads(deploy_path.read_text())
    assert deploy["stage1"] in ("v4", "heuristic") and deploy["judged_on"]["split"] == "test"

    # make train-lvm BANK=... (one epoch)
    run(["training.train_lvm", "--config", "lvm_default.yaml", "--deploy", str(deploy_path),
         "--pairs", str(pairs_path), "--out", "runs/kitchen_bank/lvm", "--epochs", "1"],
        tmp_path)
    # The LVM is served only if it beat stage 1 on val; either way deploy.json says what and why.
    deploy = json.loads(deploy_path.read_text())
    assert deploy["lvm_gate"]["deployed"] == ("lvm" in deploy) and deploy["lvm_gate"]["reason"]

    # make serve BANK=...: one real gRPC front on a free port running the cascade in process.
    config = tmp_path / "serving.yaml"
    config.write_text(yaml.safe_dump({
        "deploy": str(deploy_path),
        "front": {"addresses": [f"127.0.0.1:{free_port()}"], "metrics_port": 0, "processes": 1,
                  "stages": "in_process"}}))
    server = ServingSet(config, wait=False, ready_timeout=None, cwd=tmp_path, env=ENV)
    try:
        server.wait_ready()
        # make query BANK=... (no TEXT): a context from the bank's own test split.
        q = run(["serving.sample_query", "--config", str(config), "--bank", bank_path,
                 "--pairs", str(pairs_path)], tmp_path, timeout=120)
        assert "context: test pair" in q.stdout and "true next chunk: row" in q.stdout
        # make query TEXT="...": non-ASCII text, answered with rows of this bank.
        a = run(["serving.client", "--config", str(config), "--json",
                 "Blend the saffron with lemon juice until the purée is smooth."], tmp_path,
                timeout=120)
    finally:
        server.stop()
    response = json.loads(a.stdout)
    assert len(response["hits"]) == 10
    for hit in response["hits"]:
        row = int(hit.get("row", 0))
        assert 0 <= row < bank.n and hit["text"] == bank.text(row)
    rows = [int(line.split()[2]) for line in q.stdout.splitlines()
            if line[:4].strip().isdigit() and len(line.split()) > 3]
    assert len(rows) == 10 and all(0 <= r < bank.n for r in rows)


def test_a_bank_without_a_shipped_profile_gets_relative_gates():
    # No PROFILE=, a bank no shipped profile is made for: the default recipe, relative gates.
    assert choose_profile(None, "artifacts/pydocs_bank.npz") == (
        "default", "artifacts/pydocs_bank.npz", True)
    # Its shipped profile (its own gates) for the default and the long-document bank.
    assert choose_profile(None, "artifacts/wikipedia_vital_bank.npz") == (
        "default", "artifacts/wikipedia_vital_bank.npz", False)
    assert choose_profile(None, "artifacts/sotu_bank.npz") == ("long", None, False)
    assert choose_profile(None, None) == ("default", None, False)
    # PROFILE= keeps its own gates.
    assert choose_profile("smoke", "artifacts/pydocs_bank.npz") == (
        "smoke", "artifacts/pydocs_bank.npz", False)


def test_relative_gates_follow_the_rule_and_say_where_they_come_from():
    cfg = load_config("v4_default.yaml")
    heuristic = {"recall@10": 40.0, "recall@50": 70.0, "recall@100": 80.0, "recall@500": 92.5,
                 "recall@1000": 96.0, "margin": -0.0670}
    out, lines = relative_to_heuristic(cfg, heuristic, RelativeGates(), "val (139 pairs)")
    assert (out.gates.metric, out.gates.mid, out.gates.success, out.gates.partial) == (
        "recall@500", 92.5, 97.5, 93.5)
    assert out.abort.margin == pytest.approx(-0.167)
    assert (out.abort.patience, out.abort.after_epoch) == (cfg.abort.patience,
                                                           cfg.abort.after_epoch)
    assert out.select_metric == cfg.select_metric and out.epochs == cfg.epochs
    text = "\n".join(lines)
    assert "success recall@500 >= 97.5%: the exp-weighted heuristic's recall@500 on val " \
           "(139 pairs), 92.50% + 5 points" in text
    assert "heuristic's own Δ on val (139 pairs), -0.0670, - 0.1" in text
    # Success would lie above 100%: the largest recall@K with room is gated (and selects).
    saturated = {**heuristic, "recall@500": 97.0, "recall@1000": 99.0}
    out, lines = relative_to_heuristic(cfg, saturated, RelativeGates(), "val")
    assert (out.gates.metric, out.gates.success, out.select_metric) == (
        "recall@100", 85.0, "recall@100")
    assert lines[0].startswith("gated metric recall@100 instead of recall@500")
    out, _ = relative_to_heuristic(cfg, saturated, RelativeGates(move_metric=False), "val")
    assert (out.gates.metric, out.gates.success, out.gates.partial) == ("recall@500", 100.0,
                                                                         98.0)



def test_each_make_target_of_the_path_prints_the_next_command():
    def dry(*args: str) -> str:
        r = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    bank = "BANK=artifacts/my_bank.npz"
    assert 'echo "next: make train-v4 BANK=artifacts/my_bank.npz"' in dry("data",
                                                                         "CORPUS=x/my.jsonl")
    assert "next: make train-lvm BANK=artifacts/my_bank.npz" in dry("train-v4", bank)
    assert "next: make serve BANK=artifacts/my_bank.npz" in dry("train-lvm", bank)
    serve = dry("serve", bank)
    assert "make query BANK=artifacts/my_bank.npz" in serve
    assert "--deploy runs/my_bank/deploy.json" in serve
    # make query: a context from the bank's own test split, or TEXT= passed through the
    # environment (quotes and $ in it stay as typed).
    query = dry("query", bank)
    assert ("serving.sample_query --config serving/serving.yaml --bank artifacts/my_bank.npz"
            in query and "artifacts/twotower/my_bank/pairs_v4.npz" in query)
    assert 'serving.client --config serving/serving.yaml "$QUERY_TEXT"' in dry(
        "query", bank, 'TEXT=it\'s "$x"')
    said = subprocess.run(["make", "-s", "-f", "-", "show", 'TEXT=it\'s "$x" $(y)'],
                          input=(REPO / "Makefile").read_text().split(".DEFAULT_GOAL")[0]
                          + '\nshow:\n\t@printf "%s" "$$QUERY_TEXT"\n', cwd=REPO,
                          capture_output=True, text=True)
    assert said.stdout == 'it\'s "$x" $(y)', said
