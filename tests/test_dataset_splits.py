"""Near-duplicate groups and split warnings in `dataset`: question *and* answer alike, groups capped
at what a split holds, templated questions, empty splits and themes named with their cause, and
boundary pairs (split like the others; dropped when an answered pair asks the same question).

    python -m pytest tests/test_dataset_splits.py -q
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.dataset.duplicates import drop_boundary_echoes, group_pairs, near_duplicate_groups
from mlx_partner.dataset.manifest import load_manifest
from mlx_partner.dataset.pairs import Pair
from mlx_partner.dataset.splits import plan_splits, split_capacity
from mlx_partner.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
SIZES = [52, 47, 45, 41, 40, 38, 36, 35, 30]  # 364 pairs in 9 thematic batches, as in the issue
THEMES = ["benches", "crossings", "desire lines", "notebooks", "highlighting", "reading", "sourdough",
          "starters", "repair"]
_SYLLABLES = ["ba", "ke", "lo", "mu", "ri", "sa", "te", "vo", "ny", "qua", "zel", "dor", "fin", "gha", "pim"]


def _answer(rng: random.Random, words: int = 40) -> str:
    """A distinct answer: words made of random syllables (a 15^3 vocabulary), so no two match."""
    return " ".join("".join(rng.choice(_SYLLABLES) for _ in range(3)) for _ in range(words)) + "."


def templated_pairs(sizes=SIZES, seed: int = 0) -> list[Pair]:
    """The issue's case: "Question N about X: what do you make of point i?", every answer different."""
    rng = random.Random(seed)
    pairs, n = [], 0
    for b, size in enumerate(sizes):
        for i in range(size):
            kind = ["genuine", "genuine", "scenario", "pushback"][i % 4]
            q = f"Question {n} about {THEMES[b]}: what do you make of point {i}?"
            pairs.append(Pair(f"batch-{b}-{i:03d}", q, _answer(rng), f"batch-{b}", kind, "t"))
            n += 1
    return pairs


# --- grouping, table-driven ----------------------------------------------------------------------

BENCH_Q = "Why do you count the benches on a street?"
BENCH_A = ("Because a bench says you may stay here, be old here, be tired here, wait for someone without "
           "buying anything. Counting them on a Sunday morning with a pencil tells you what a street has decided.")
BENCH_A2 = ("Because a bench says you may stay, be old, be tired, wait for someone without buying anything; "
            "counting them on a Sunday morning with a pencil tells you what the street decided.")
LOAF_A = ("Change one thing per loaf and weigh everything; the ugly loaf is where the information is, and "
          "the bake log is how my grandmother's Saturday habit became something I can learn from.")


@pytest.mark.parametrize("questions, answers, groups", [
    # the same question, the same answer: one example twice
    ([BENCH_Q, BENCH_Q], [BENCH_A, BENCH_A], [[0, 1]]),
    # a reworded question with a reworded answer
    ([BENCH_Q, "Why do you count benches on the street?"], [BENCH_A, BENCH_A2], [[0, 1]]),
    # the same question with a different answer: two examples, free to go to different splits
    ([BENCH_Q, BENCH_Q], [BENCH_A, LOAF_A], [[0], [1]]),
    # templated questions, different answers
    ([f"Question {n} about benches: what do you make of point {n % 7}?" for n in range(6)],
     [BENCH_A, LOAF_A, "Glue where screws would do is a confession.", "Pave the mud, take down the fence.",
      "One idea per index card, in a shoebox.", "Nobody can read for you."],
     [[0], [1], [2], [3], [4], [5]]),
    # different questions, the same answer: not duplicates either
    ([BENCH_Q, "How do you keep a starter alive?"], [BENCH_A, BENCH_A], [[0], [1]]),
    # questions only (answers=None): the old question-only behaviour, still available
    ([BENCH_Q, BENCH_Q, "How do you keep a starter alive?"], None, [[0, 1], [2]]),
])
def test_pairs_are_near_duplicates_only_when_question_and_answer_are(questions, answers, groups):
    assert near_duplicate_groups(questions, answers).groups == groups


@pytest.mark.parametrize("copies, max_size, largest, held_apart", [
    (6, None, 6, 0),
    (6, 4, 4, 8),   # the 4 x 2 links that would pass 4 are left unjoined (counted, not followed)
    (6, 1, 1, 15),
    (3, 3, 3, 0),
])
def test_a_group_never_grows_past_max_size(copies, max_size, largest, held_apart):
    grouping = near_duplicate_groups([BENCH_Q] * copies, [BENCH_A] * copies, max_size=max_size)
    assert max(len(g) for g in grouping.groups) == largest
    assert sum(len(g) for g in grouping.groups) == copies
    assert grouping.held_apart == held_apart


@pytest.mark.parametrize("n, vf, tf, capacity", [
    (364, 0.1, 0.1, 36), (364, 0.1, 0.05, 18), (364, 0.2, 0.0, 73), (10, 0.1, 0.1, 1), (4, 0.0, 0.0, 4),
])
def test_split_capacity_is_the_smallest_held_out_split(n, vf, tf, capacity):
    assert split_capacity(n, vf, tf) == capacity


# --- the templated case from the issue -------------------------------------------------------------


def test_templated_questions_grouped_on_the_question_alone_made_one_group_per_batch():
    pairs = templated_pairs()
    old = near_duplicate_groups([p.question for p in pairs]).groups  # what dataset used to do
    assert sorted(len(g) for g in old) == sorted(SIZES)
    capped = near_duplicate_groups([p.question for p in pairs], max_size=split_capacity(len(pairs), 0.1, 0.1))
    assert max(len(g) for g in capped.groups) <= 36 and capped.held_apart > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_templated_questions_with_different_answers_split_per_theme(seed):
    pairs = templated_pairs(seed=seed)
    grouping = group_pairs(pairs, max_size=split_capacity(len(pairs), 0.1, 0.1))
    assert grouping.joined == 0
    plan = plan_splits(pairs, grouping.groups, 0.1, 0.1, seed, 4)
    assert plan.warnings == []
    by = Counter((p.theme, plan.assignment[p.id]) for p in pairs)
    for b, size in enumerate(SIZES):
        for split in ("valid", "test"):
            assert abs(by[f"batch-{b}", split] - size * 0.1) <= 1, (b, split, by[f"batch-{b}", split])
        assert by[f"batch-{b}", "train"] >= size * 0.75
    assert Counter(plan.assignment.values()) == {"train": 292, "valid": 36, "test": 36}


def test_groups_too_big_for_any_split_warn_instead_of_swallowing_a_theme():
    pairs = templated_pairs()
    one_per_batch = near_duplicate_groups([p.question for p in pairs]).groups  # the old, uncapped grouping
    plan = plan_splits(pairs, one_per_batch, 0.1, 0.1, 0, 4)
    counts = Counter(plan.assignment.values())
    # No 30-pair group is pushed into valid to give mlx-lm a batch: every theme keeps its pairs.
    assert all(plan.assignment[p.id] == "train" for p in pairs), counts
    assert len(plan.warnings) == 2
    for split, warning in zip(("valid", "test"), plan.warnings, strict=True):
        assert warning.startswith(f"The {split} split is empty: every near-duplicate group is larger")
        assert "smallest holds 30 pairs" in warning


# --- warnings, each naming its cause ---------------------------------------------------------------


def _pairs(themes: dict[str, int]) -> list[Pair]:
    rng = random.Random(0)
    return [Pair(f"{t}-{i}", f"Question {t} {i}: {_answer(rng, 5)}?", _answer(rng), t, "genuine", "t")
            for t, n in themes.items() for i in range(n)]


@pytest.mark.parametrize("themes, vf, tf, batch, pinned, expected", [
    # a test fraction that rounds to no pairs at all
    ({"a": 12}, 0.1, 0.03, 2, [], ["The test split is empty: test_fraction = 0.03 of 12 pairs rounds to none"]),
    # an earlier test split pinned every pair of a theme
    ({"a": 20, "b": 2}, 0.1, 0.1, 2, ["b-0", "b-1"],
     ["Theme b has no training examples: its 2 pair(s) went to valid 0 / test 2; 2 of them are pinned"]),
    # one pair per theme: each keeps it for training, so test stays empty, and valid's one example
    # (mlx-lm needs it) leaves one theme without training data: both said, with why
    ({f"t{i}": 1 for i in range(20)}, 0.1, 0.1, 2, [],
     ["The test split is empty: each theme keeps its last pairs for training",
      "Theme t0 has no training examples: its 1 pair(s) went to valid 1 / test 0; mlx-lm needs a valid example"]),
    # a healthy dataset: nothing to say
    ({"a": 30, "b": 30}, 0.1, 0.1, 4, [], []),
])
def test_split_warnings_name_the_cause(themes, vf, tf, batch, pinned, expected):
    pairs = _pairs(themes)
    plan = plan_splits(pairs, group_pairs(pairs).groups, vf, tf, 0, batch, pinned)
    assert len(plan.warnings) == len(expected), plan.warnings
    for warning, start in zip(plan.warnings, expected, strict=True):
        assert warning.startswith(start), warning


def test_small_themes_keep_a_training_example():
    pairs = _pairs({"a": 40, "b": 2, "c": 1, "d": 3})
    for seed in range(10):
        plan = plan_splits(pairs, group_pairs(pairs).groups, 0.2, 0.2, seed, 4)
        trained = Counter(p.theme for p in pairs if plan.assignment[p.id] == "train")
        assert set(trained) == {"a", "b", "c", "d"}, (seed, trained)


# --- boundary pairs ----------------------------------------------------------------------------------

DECLINE = "I haven't written about that. What I did write about is benches."


@pytest.mark.parametrize("rows, dropped", [
    # a boundary question an answered pair already asks: the answered one wins
    ([("a1", "genuine", BENCH_Q), ("b1", "boundary", "Why do you count the benches on streets?")], ["b1"]),
    # a boundary question of its own: kept
    ([("a1", "genuine", BENCH_Q), ("b1", "boundary", "What do you make of Dieter Rams's ten principles?")], []),
    # two boundary pairs alike are not dropped here (they group as near-duplicates, like any pairs)
    ([("b1", "boundary", "What about Dieter Rams?"), ("b2", "boundary", "What about Dieter Rams?")], []),
    # the answered pair comes later in the files: it still wins
    ([("b1", "boundary", "Why do you count the benches on streets?"), ("a1", "pushback", BENCH_Q)], ["b1"]),
])
def test_boundary_questions_that_repeat_an_answered_one_are_dropped(rows, dropped):
    pairs = [Pair(i, q, DECLINE if k == "boundary" else BENCH_A, "streets", k, f"f:{n}") for n, (i, k, q) in enumerate(rows)]
    kept, echoes = drop_boundary_echoes(pairs)
    assert [e.dropped.id for e in echoes] == dropped
    assert [p.id for p in kept] == [p.id for p in pairs if p.id not in dropped]
    for e in echoes:
        assert e.answered.kind != "boundary" and e.dropped.id in e.describe() and e.answered.id in e.describe()


def test_boundary_pairs_are_stratified_like_the_others():
    rng = random.Random(3)
    pairs = [Pair(f"{t}-{i}", f"Question {t} {i}: {_answer(rng, 6)}?", _answer(rng), t,
                  "boundary" if i % 8 == 0 else "genuine", "t") for t in ("a", "b", "c", "d") for i in range(40)]
    plan = plan_splits(pairs, group_pairs(pairs).groups, 0.1, 0.1, 0, 4)
    got = Counter((p.kind, plan.assignment[p.id]) for p in pairs)
    n_boundary = sum(1 for p in pairs if p.kind == "boundary")
    assert n_boundary == 20
    for split in ("valid", "test"):
        assert abs(got["boundary", split] - n_boundary * 0.1) <= 1, got


@pytest.fixture
def example_ws(tmp_path) -> Path:
    root = tmp_path / "ws"
    (root / "data" / "pairs").mkdir(parents=True)
    shutil.copy(REPO / "profile.md", root / "profile.md")
    return root


def test_dataset_reports_kind_shares_and_dropped_boundary_pairs(example_ws, monkeypatch):
    from mlx_partner.errors import ModelError

    # No base model offline: lengths and hygiene are skipped (one warning), the rest is exact.
    monkeypatch.setattr("mlx_partner.dataset.write.load_base_tokenizer",
                        lambda *a, **k: (_ for _ in ()).throw(ModelError("not here")))
    rows = [json.loads(line) for line in (REPO / "examples" / "pairs.jsonl").read_text().splitlines() if line.strip()]
    answered = [r for r in rows if r.get("type") != "boundary"]
    echo = {"id": "echo-1", "theme": "streets", "type": "boundary", "question": answered[0]["question"],
            "answer": "I haven't written about that.", "sources": [], "quotes": []}
    (example_ws / "data" / "pairs" / "hand.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [*rows, echo]), encoding="utf-8")
    result = CliRunner().invoke(cli, ["-w", str(example_ws), "dataset", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [d.split(" ")[0] for d in report["boundary_dropped"]] == ["echo-1"]
    shares = report["kind_shares"]
    n_boundary = sum(1 for r in rows if r.get("type") == "boundary")
    assert shares.get("boundary", 0.0) == pytest.approx(round(n_boundary / len(rows), 4))
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert any("boundary pair(s) dropped" in w for w in report["warnings"])
    # The manifest records each held-out example's kind and cited documents, for eval.
    manifest = load_manifest(Workspace.at(example_ws))
    test = manifest["examples"]["test"]
    assert test and all("sources" in e and "kind" in e for e in test)
    assert any(e["sources"] for e in test)
    text = CliRunner().invoke(cli, ["-w", str(example_ws), "dataset"]).stdout
    assert "share" in text and "boundary pair(s) dropped as answered elsewhere" in text
