"""The `dataset` stage: pairs to mlx-lm chat JSONL, splits, length stats, template hygiene, CLI errors.

    /work/venv/bin/pytest tests/test_dataset.py -q
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.cli import cli
from mlx_partner.config import Settings
from mlx_partner.dataset.duplicates import group_pairs, near_duplicate_groups
from mlx_partner.dataset.manifest import SPLITS, dataset_hash, load_manifest
from mlx_partner.dataset.pairs import Pair, drop_duplicates, read_pairs
from mlx_partner.dataset.splits import apportion, plan_splits
from mlx_partner.dataset.stats import length_stats
from mlx_partner.dataset.system_prompt import load_system_prompt, system_prompt_from_profile
from mlx_partner.dataset.write import run_dataset
from mlx_partner.errors import DatasetError
from mlx_partner.prompts import (
    chat_messages,
    encode_prompt,
    hygiene_checks,
    load_base_tokenizer,
    render_prompt,
    training_tokens,
)
from mlx_partner.workspace import Workspace, read_jsonl

REPO = Path(__file__).resolve().parent.parent

# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_llama3(tmp_path_factory) -> Path:
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama3") / "m", template="llama3")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory) -> Path:
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-gemma") / "m", template="gemma")


@pytest.fixture
def models(tiny_model, tiny_llama3, tiny_gemma) -> dict[str, Path]:
    return {"chatml": tiny_model, "llama3": tiny_llama3, "gemma": tiny_gemma}


def variant(model: Path, dest: Path, template: str, extra_specials: list[str] = ()) -> Path:
    """A copy of a tiny model with another chat template (and optionally more special tokens)."""
    shutil.copytree(model, dest)
    cfg = json.loads((dest / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    if extra_specials:
        from tokenizers import AddedToken, Tokenizer

        tok = Tokenizer.from_file(str(dest / "tokenizer.json"))
        tok.add_special_tokens([AddedToken(s, special=False, normalized=False) for s in extra_specials])
        tok.save(str(dest / "tokenizer.json"))
    return dest


_WORDS = ["bench", "street", "bread", "starter", "notebook", "card", "repair", "glue", "screw", "council", "guild", "inspection", "crossing", "button", "desire", "line", "mud", "fence", "highlight", "summary", "tool", "spanner", "loaf", "crumb", "oven", "market", "grandmother", "neighbour", "printer", "kettle", "toaster", "lamp"]
_VERBS = ["think", "feel", "argue", "decide", "measure", "count", "fix", "bake", "read", "write", "design", "judge"]
SEED_SIZES = [52, 47, 45, 41, 40, 38, 36, 35, 30]  # 364 pairs in 9 thematic batches


def synthetic_pairs(sizes=SEED_SIZES, seed: int = 1, answer_words=(8, 30)) -> dict[str, list[dict]]:
    """Pairs as `generate` writes them, one list per batch; distinct questions."""
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {}
    n = 0
    for b, size in enumerate(sizes):
        theme = f"theme{b}"
        rows = []
        for k in range(size):
            kind = rng.choices(["genuine", "scenario", "pushback"], [2, 1, 1])[0]
            q = (f"Case {n}: how do you {rng.choice(_VERBS)} the {rng.choice(_WORDS)} and the "
                 f"{rng.choice(_WORDS)} near the {rng.choice(_WORDS)} {rng.choice(_WORDS)}?")
            a = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(*answer_words))) + "."
            rows.append({"id": f"{theme}-{k:03d}", "batch": f"b{b}", "theme": theme, "type": kind,
                         "question": q, "answer": a, "sources": ["doc"], "quotes": [{"source": "doc", "text": a[:20]}],
                         "model": "fake", "prompt_version": "1", "source_hashes": {"doc": "x"}})
            n += 1
        out[theme] = rows
    return out


def write_pairs(ws_root: Path, batches: dict[str, list[dict]]) -> None:
    pairs_dir = ws_root / "data" / "pairs"
    pairs_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in batches.items():
        (pairs_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def ws(tmp_path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copy(REPO / "profile.md", root / "profile.md")
    return root


def invoke(ws_root: Path, *args: str):
    return CliRunner().invoke(cli, ["-w", str(ws_root), "dataset", *args])


def to_pairs(batches: dict[str, list[dict]]) -> list[Pair]:
    return [Pair(r["id"], r["question"], r["answer"], r["theme"], r["type"], "t") for rows in batches.values() for r in rows]


# --- the system prompt -------------------------------------------------------------------------


def test_system_prompt_from_the_profile_is_short_stable_and_first_person():
    text = (REPO / "profile.md").read_text()
    prompt = system_prompt_from_profile(text)
    assert prompt == system_prompt_from_profile(text)
    assert prompt.startswith("You are Oona Vesterberg's thinking partner.")
    assert "first person" in prompt and "I haven't written about that" in prompt
    assert "I am Oona Vesterberg, a third-year PhD student" in prompt
    assert len(prompt) < 800
    assert "Dry humour" not in prompt  # only the first lines, not the whole profile


@pytest.mark.parametrize("profile, expected", [
    ("", "You are the author's thinking partner."),
    ("# Author profile\n\nDescribe yourself as the partner should sound. Write in the first person.\n\n"
     "## Who I am\nOne or two sentences: what you study or write about, and for whom.\n",
     "You are the author's thinking partner."),
    ("# Me\n\nI'm Ada Byron and I write about engines. Also poems.\n", "You are Ada Byron's thinking partner."),
    ("Nobody in particular writes these notes about gardens and soil.", "You are the author's thinking partner."),
])
def test_system_prompt_without_a_name_or_from_the_template(profile, expected):
    prompt = system_prompt_from_profile(profile)
    assert prompt.startswith(expected)
    assert "Describe yourself" not in prompt and "One or two sentences" not in prompt


def test_system_prompt_setting_wins_and_is_saved(ws):
    write_pairs(ws, synthetic_pairs([20]))
    (ws / "partner.toml").write_text('[dataset]\nsystem_prompt = "You are Bo. Answer as Bo."\n[train]\nbatch_size = 2\n')
    result = invoke(ws, "--base-model", "/nonexistent/model")
    assert result.exit_code == 0, result.output
    assert load_system_prompt(Workspace.at(ws)) == "You are Bo. Answer as Bo."
    first = read_jsonl(ws / "data" / "train.jsonl")[0][0]
    assert first["messages"][0] == {"role": "system", "content": "You are Bo. Answer as Bo."}


def test_load_system_prompt_missing_says_run_dataset(tmp_path):
    with pytest.raises(DatasetError, match="run `mlx-partner dataset`"):
        load_system_prompt(Workspace.at(tmp_path))


# --- the chat template: training and chat see the same prompt ----------------------------------


@pytest.mark.parametrize("template", ["chatml", "llama3", "gemma"])
def test_hygiene_same_system_prompt_in_training_and_chat(models, template):
    tok, _ = load_base_tokenizer(str(models[template]))
    system = system_prompt_from_profile((REPO / "profile.md").read_text())
    q, a = "How many benches should a street have?", "Count them first. Then add two."
    checks = {c.name: c for c in hygiene_checks(tok, system, q, a)}
    assert checks["system prompt once"].status == "ok"
    assert checks["same prompt"].status == "ok"
    assert checks["system role"].status == "ok"
    assert checks["think blocks"].status == "ok"
    # What chat renders is exactly the start of what mlx-lm's trainer tokenizes.
    messages = chat_messages(system, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], tok)
    tokens, offset = training_tokens(tok, {"messages": messages}, mask_prompt=True)
    prompt = encode_prompt(tok, render_prompt(tok, messages[:-1], add_generation_prompt=True))
    assert tokens[: len(prompt)] == prompt and offset == len(prompt)
    assert tok.decode(tokens[offset:]).startswith(a)
    if template == "gemma":
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"] == f"{system}\n\n{q}"
    else:
        assert messages[0] == {"role": "system", "content": system}
    if template == "llama3":
        assert checks["no injected text"].status == "warn"
        assert "Cutting Knowledge Date" in checks["no injected text"].detail
    else:
        assert checks["no injected text"].status == "ok"


def test_chat_messages_without_a_tokenizer_is_the_standard_form():
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert chat_messages("S", turns, None) == [{"role": "system", "content": "S"}, *turns]


def test_hygiene_flags_a_default_system_prompt_and_a_daily_date(models, tmp_path):
    # Drops the system message (so it is folded) and injects its own default system prompt.
    qwen_like = (
        "{% for m in messages %}{% if m['role'] != 'system' %}"
        "{% if loop.first or (loop.index0 == 1 and messages[0]['role'] == 'system') %}"
        "{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tok, _ = load_base_tokenizer(str(variant(models["chatml"], tmp_path / "qwen", qwen_like)))
    checks = {c.name: c for c in hygiene_checks(tok, "You are Oona.", "Why?", "Because.")}
    assert checks["no injected text"].status == "warn" and "You are Qwen" in checks["no injected text"].detail
    assert checks["system prompt once"].status == "ok"  # folded into the user turn

    dated = models["llama3"]
    template = json.loads((dated / "tokenizer_config.json").read_text())["chat_template"].replace(
        "26 Jul 2024", "' + strftime_now('%d %b %Y') + '")
    tok, _ = load_base_tokenizer(str(variant(dated, tmp_path / "dated", template)))
    checks = {c.name: c for c in hygiene_checks(tok, "You are Oona.", "Why?", "Because.")}
    assert checks["no injected text"].status == "fail" and "today's date" in checks["no injected text"].detail


def test_hygiene_fails_when_the_system_prompt_is_repeated(models, tmp_path):
    twice = models["chatml"]
    template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
                "{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{% endif %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tok, _ = load_base_tokenizer(str(variant(twice, tmp_path / "twice", template)))
    checks = {c.name: c for c in hygiene_checks(tok, "You are Oona.", "Why?", "Because.")}
    assert checks["system prompt once"].status == "fail"
    assert checks["same prompt"].status == "fail"


QWEN3_LIKE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and loop.last %}{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' + m['content'] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}"
)


def test_think_blocks_off_the_same_way(models, tmp_path):
    tok, _ = load_base_tokenizer(str(variant(models["chatml"], tmp_path / "q3", QWEN3_LIKE, ["<think>", "</think>"])))
    assert tok.has_thinking
    checks = {c.name: c for c in hygiene_checks(tok, "You are Oona.", "Why?", "Because.")}
    assert checks["think blocks"].status == "ok" and checks["same prompt"].status == "ok"
    # A template that ignores enable_thinking leaves chat without the block training shows.
    ignores = QWEN3_LIKE.replace("{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}", "")
    tok, _ = load_base_tokenizer(str(variant(models["chatml"], tmp_path / "q3b", ignores, ["<think>", "</think>"])))
    checks = {c.name: c for c in hygiene_checks(tok, "You are Oona.", "Why?", "Because.")}
    assert checks["think blocks"].status == "fail"


# --- duplicates and splits ---------------------------------------------------------------------


def test_near_duplicate_groups_link_every_close_pair():
    texts = [
        "What do you think about benches on a street?",
        "What do you think about the benches on a street?",
        "How should I keep a sourdough starter alive?",
        "What do you think about benches on the street?",
        "Why write one sentence per page?",
    ]
    assert near_duplicate_groups(texts).groups == [[0, 1, 3], [2], [4]]


def test_near_duplicate_groups_agree_with_generates_similarity():
    from mlx_partner.grounding import DUPLICATE_THRESHOLD, similarity

    qs = [r["question"] for rows in synthetic_pairs([40, 40, 40]).values() for r in rows]
    qs += [q.replace("how do you", "how would you") for q in qs[::10]]
    groups = near_duplicate_groups(qs).groups
    group_of = {i: n for n, g in enumerate(groups) for i in g}
    close = [(i, j) for i in range(len(qs)) for j in range(i) if similarity(qs[i], qs[j]) >= DUPLICATE_THRESHOLD]
    assert len(close) >= 12
    assert all(group_of[i] == group_of[j] for i, j in close)


def test_exact_duplicates_dropped_by_id_or_text():
    a = Pair("1", "Why?", "Because.", "t", "genuine", "f:1")
    b = Pair("2", "why", "because", "t", "genuine", "f:2")  # same words
    c = Pair("1", "Other?", "Other.", "t", "genuine", "f:3")  # same id
    kept, dropped = drop_duplicates([a, b, c])
    assert kept == [a] and dropped == [b, c]


@pytest.mark.parametrize("total, weights, expected", [
    (4, {"a": 1, "b": 1, "c": 2}, {"a": 1, "b": 1, "c": 2}),
    (0, {"a": 1}, {"a": 0}),
    (3, {"a": 5.2, "b": 4.7, "c": 3.1}, {"a": 1, "b": 1, "c": 1}),
])
def test_apportion(total, weights, expected):
    assert apportion(total, weights, random.Random(0)) == expected


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_364_pairs_in_9_batches_follow_the_fractions_per_theme(seed):
    batches = synthetic_pairs(seed=seed)
    pairs = to_pairs(batches)
    assert len(pairs) == 364
    plan = plan_splits(pairs, group_pairs(pairs).groups, 0.1, 0.1, seed, 4)
    by = Counter((p.theme, plan.assignment[p.id]) for p in pairs)
    for theme, rows in batches.items():
        for split in ("valid", "test"):
            assert abs(by[theme, split] - len(rows) * 0.1) <= 1, (theme, split, by[theme, split])
    totals = Counter(plan.assignment.values())
    assert totals["valid"] == 36 and totals["test"] == 36 and totals["train"] == 292
    # Each kind is represented in proportion too, within one of its share in every split.
    kinds = Counter((p.kind, plan.assignment[p.id]) for p in pairs)
    n_kind = Counter(p.kind for p in pairs)
    for kind, n in n_kind.items():
        for split in ("valid", "test"):
            assert abs(kinds[kind, split] - n * 0.1) <= 1, (kind, split)


@pytest.mark.parametrize("seed", range(12))
def test_any_theme_sizes_and_fractions_stay_within_one(seed):
    rng = random.Random(seed)
    sizes = [rng.randint(3, 60) for _ in range(rng.randint(2, 12))]
    pairs = to_pairs(synthetic_pairs(sizes, seed=seed))
    groups = group_pairs(pairs).groups
    for vf, tf in ((0.1, 0.1), (0.15, 0.05), (0.2, 0.0)):
        plan = plan_splits(pairs, groups, vf, tf, seed, batch_size=1)
        for key in ("theme", "kind"):
            got = Counter((getattr(p, key), plan.assignment[p.id]) for p in pairs)
            for value, n in Counter(getattr(p, key) for p in pairs).items():
                for split, f in (("valid", vf), ("test", tf)):
                    assert abs(got[value, split] - n * f) <= 1, (sizes, vf, tf, key, value, split)


def test_splits_are_seeded():
    pairs = to_pairs(synthetic_pairs())
    groups = group_pairs(pairs).groups
    a = plan_splits(pairs, groups, 0.1, 0.1, 3, 4).assignment
    assert a == plan_splits(pairs, groups, 0.1, 0.1, 3, 4).assignment
    assert a != plan_splits(pairs, groups, 0.1, 0.1, 4, 4).assignment


def test_near_duplicates_never_straddle_splits():
    batches = synthetic_pairs()
    base, answer = batches["theme0"][0]["question"], batches["theme0"][0]["answer"]
    for b, theme in enumerate(["theme1", "theme2", "theme3", "theme4"]):
        batches[theme][0]["question"] = base.replace("how do you", ["how would you", "How do you", "how did you", "how do you really"][b])
        batches[theme][0]["answer"] = answer.rstrip(".") + [" indeed.", ", truly.", "!", " again."][b]  # near-same answers too
    pairs = to_pairs(batches)
    for seed in range(15):
        plan = plan_splits(pairs, group_pairs(pairs).groups, 0.1, 0.1, seed, 4)
        splits = {plan.assignment[f"{t}-000"] for t in ("theme0", "theme1", "theme2", "theme3", "theme4")}
        assert len(splits) == 1


def test_pinned_test_ids_stay_in_test():
    pairs = to_pairs(synthetic_pairs())
    groups = group_pairs(pairs).groups
    pinned = [p.id for p in pairs[::40]]
    plan = plan_splits(pairs, groups, 0.1, 0.1, 5, 4, pinned_test_ids=pinned)
    assert all(plan.assignment[i] == "test" for i in pinned)
    assert Counter(plan.assignment.values())["test"] == 36


@pytest.mark.parametrize("n, batch, valid_at_least", [(4, 2, 1), (6, 2, 2), (12, 4, 4), (9, 4, 1)])
def test_small_datasets_still_get_a_valid_example(n, batch, valid_at_least):
    pairs = to_pairs(synthetic_pairs([n]))
    plan = plan_splits(pairs, group_pairs(pairs).groups, 0.1, 0.0, 0, batch)
    counts = Counter(plan.assignment.values())
    assert counts["valid"] >= valid_at_least
    assert counts["train"] >= batch


# --- reading pairs -----------------------------------------------------------------------------


def test_read_pairs_names_bad_lines_and_keeps_unknown_kinds(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"question": "Q1?", "answer": "A1."}\n\nnot json\n[1, 2]\n{"question": "Q2?"}\n'
                 '{"question": "Q3?", "answer": "A3.", "type": "riddle", "theme": "x"}\n')
    read = read_pairs([f])
    assert [p.question for p in read.pairs] == ["Q1?", "Q3?"]
    assert read.pairs[0].kind == "genuine" and read.pairs[0].theme == "mine"
    assert read.pairs[0].id.startswith("hand-") and read.pairs[0].id == read_pairs([f]).pairs[0].id
    assert [m.split(": ")[0] for m in read.malformed] == [f"{f}:3", f"{f}:4", f"{f}:5"]
    assert "no answer" in read.malformed[2]
    assert read.warnings and "riddle" in read.warnings[0]


def test_length_stats_and_histogram():
    stats = length_stats({"a": 10, "b": 20, "c": 30, "d": 4000}, max_seq_length=2048, bins=4)
    assert (stats.max, stats.p95, stats.count) == (4000, 4000, 4)
    assert stats.too_long == [("d", 4000)]
    assert sum(n for _, _, n in stats.histogram) == 4


# --- the run and the CLI -----------------------------------------------------------------------


def test_dataset_command_writes_files_mlx_lm_reads(ws, models):
    write_pairs(ws, synthetic_pairs())
    result = invoke(ws, "--base-model", str(models["chatml"]))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Examples: 364 = train 292 / valid 36 / test 36" in out
    assert "theme0" in out and "pushback" in out and "Tokens per example" in out and "#" in out
    assert "[ ok ] same prompt" in out
    w = Workspace.at(ws)
    manifest = load_manifest(w)
    assert manifest["hash"] == manifest["content_hash"] == dataset_hash(w)
    ids = manifest["ids"]
    assert sum(len(ids[s]) for s in SPLITS) == 364 and len(set().union(*ids.values())) == 364
    for split in SPLITS:
        rows, bad = read_jsonl(ws / "data" / f"{split}.jsonl")
        assert not bad and len(rows) == len(ids[split])
        assert all([m["role"] for m in r["messages"]] == ["system", "user", "assistant"] for r in rows)
        assert all(r["messages"][0]["content"] == load_system_prompt(w) for r in rows)
    assert [e["id"] for e in manifest["examples"]["test"]] == ids["test"]
    # mlx-lm loads them as chat data with prompt masking, exactly as `mlx_lm lora --data` does.
    import types

    from mlx_lm.tuner.datasets import ChatDataset, load_dataset

    tok, _ = load_base_tokenizer(str(models["chatml"]))
    args = types.SimpleNamespace(data=str(ws / "data"), train=True, test=True, mask_prompt=True)
    train, valid, test = load_dataset(args, tok)
    assert isinstance(train, ChatDataset) and (len(train), len(valid), len(test)) == (292, 36, 36)


def test_json_report(ws, models):
    write_pairs(ws, synthetic_pairs([30, 30]))
    result = invoke(ws, "--base-model", str(models["gemma"]), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["counts"] == {"train": 48, "valid": 6, "test": 6}
    assert set(report["by_theme"]) == {"theme0", "theme1"}
    assert report["system_role"] is False and report["hygiene_ok"] is True
    assert report["lengths"]["max"] >= report["lengths"]["p95"] > 0
    rows, _ = read_jsonl(ws / "data" / "train.jsonl")
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]  # folded for Gemma


@pytest.mark.parametrize("template", ["llama3", "gemma"])
def test_other_templates_load_in_mlx_lm(ws, models, template):
    write_pairs(ws, synthetic_pairs([24]))
    assert invoke(ws, "--base-model", str(models[template])).exit_code == 0
    import types

    from mlx_lm.tuner.datasets import CacheDataset, load_dataset

    tok, _ = load_base_tokenizer(str(models[template]))
    args = types.SimpleNamespace(data=str(ws / "data"), train=True, test=False, mask_prompt=True)
    train, valid, _ = load_dataset(args, tok)
    tokens, offset = CacheDataset(train)[0]
    assert 0 < offset < len(tokens)
    assert load_system_prompt(Workspace.at(ws)) in tok.decode(tokens[:offset])


def test_mlx_lm_lora_trains_one_step_on_the_files(ws, models):
    """`python -m mlx_lm lora --data data --train --iters 1` accepts what we write (Gemma: folded)."""
    import subprocess
    import sys

    write_pairs(ws, synthetic_pairs([14], answer_words=(4, 10)))
    (ws / "partner.toml").write_text("[train]\nbatch_size = 2\n")
    assert invoke(ws, "--base-model", str(models["gemma"])).exit_code == 0
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "lora", "--model", str(models["gemma"]), "--data", str(ws / "data"),
         "--train", "--iters", "1", "--batch-size", "2", "--val-batches", "1", "--num-layers", "1",
         "--mask-prompt", "--adapter-path", str(ws / "adapters")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (ws / "adapters" / "adapters.safetensors").exists()


def test_hand_written_pairs_plain_format(ws, models, tmp_path):
    mine = tmp_path / "pairs.jsonl"
    mine.write_text("".join(json.dumps({"question": f"Question number {i} about {w}?", "answer": f"Answer {i}."}) + "\n"
                            for i, w in enumerate(_WORDS[:20])))
    result = invoke(ws, "--pairs", str(mine), "--base-model", str(models["chatml"]), "--test-fraction", "0")
    assert result.exit_code == 0, result.output
    assert "Examples: 20 = train 16 / valid 4 / test 0" in result.stdout
    assert "valid raised from 2 to 4" in result.stdout  # a full batch for mlx-lm's validation
    assert not (ws / "data" / "test.jsonl").exists()


def test_keep_test_keeps_the_last_test_split(ws):
    batches = synthetic_pairs([40, 40])
    write_pairs(ws, batches)
    assert invoke(ws, "--base-model", "/nonexistent/model").exit_code == 0
    before = load_manifest(Workspace.at(ws))["ids"]["test"]
    batches["theme2"] = synthetic_pairs([20], seed=9)["theme0"]
    for r in batches["theme2"]:
        r["id"], r["theme"] = r["id"].replace("theme0", "theme2"), "theme2"
    write_pairs(ws, batches)
    assert invoke(ws, "--base-model", "/nonexistent/model", "--keep-test", "--seed", "3").exit_code == 0
    after = load_manifest(Workspace.at(ws))["ids"]["test"]
    assert set(before) <= set(after) and len(after) == 10


def test_run_dataset_with_pinned_ids(ws):
    write_pairs(ws, synthetic_pairs([40, 40]))
    settings = Settings().override("train", batch_size=2)
    report = run_dataset(Workspace.at(ws), settings, base_model="/nonexistent/model",
                         pinned_test_ids=["theme0-000", "theme1-001"])
    assert {"theme0-000", "theme1-001"} <= set(report.ids["test"])
    assert report.lengths is None and report.hygiene == []


def test_too_long_examples_are_named_with_a_suggested_setting(ws, models):
    write_pairs(ws, synthetic_pairs([20], answer_words=(5, 10)))
    rows = synthetic_pairs([20], answer_words=(5, 10))["theme0"]
    rows[3]["answer"] = " ".join(_WORDS * 12)
    write_pairs(ws, {"theme0": rows})
    (ws / "partner.toml").write_text("[train]\nmax_seq_length = 256\nbatch_size = 2\n")
    result = invoke(ws, "--base-model", str(models["chatml"]))
    assert result.exit_code == 0, result.output
    assert "theme0-003" in result.stderr and "max_seq_length=256" in result.stderr
    longest = int(re.search(r"theme0-003 \((\d+)\)", result.stderr).group(1))
    suggested = int(re.search(r"set max_seq_length = (\d+) in \[train\]", result.stderr).group(1))
    assert suggested % 256 == 0 and longest <= suggested < longest + 256


def test_base_model_missing_offline_still_writes_with_one_warning(ws, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_pairs(ws, synthetic_pairs([30]))
    result = invoke(ws, "--base-model", "nobody/no-such-model")
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("Warning:")]
    assert len(warnings) == 1 and "nobody/no-such-model" in warnings[0] and "skipped" in warnings[0]
    assert (ws / "data" / "train.jsonl").exists() and "Tokens per example" not in result.stdout


# --- error paths -------------------------------------------------------------------------------


def test_no_pairs_says_generate_or_pairs(ws):
    result = invoke(ws, "--base-model", "/nonexistent/model")
    assert result.exit_code == 1
    assert "mlx-partner generate" in result.stderr and "--pairs" in result.stderr
    assert "Traceback" not in result.output


def test_only_malformed_pairs_is_no_pairs(ws):
    (ws / "data" / "pairs").mkdir(parents=True)
    (ws / "data" / "pairs" / "b.jsonl").write_text("{oops\n")
    result = invoke(ws)
    assert result.exit_code == 1 and "No pairs" in result.stderr


def test_malformed_lines_are_named_and_skipped(ws):
    batches = synthetic_pairs([30])
    write_pairs(ws, batches)
    path = ws / "data" / "pairs" / "theme0.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(4, '{"question": "cut off')
    path.write_text("\n".join(lines) + "\n")
    result = invoke(ws, "--base-model", "/nonexistent/model")
    assert result.exit_code == 0, result.output
    assert f"Skipped {path}:5: not valid JSON" in result.stderr
    assert "Examples: 30 =" in result.stdout


def test_unknown_kind_is_kept_with_a_warning(ws):
    batches = synthetic_pairs([30])
    batches["theme0"][0]["type"] = "koan"
    write_pairs(ws, batches)
    result = invoke(ws, "--base-model", "/nonexistent/model")
    assert result.exit_code == 0
    assert "unknown kind 'koan'" in result.stderr and "koan" in result.stdout


def test_duplicates_are_dropped_and_id_clashes_named(ws, tmp_path):
    batches = synthetic_pairs([30])
    write_pairs(ws, batches)
    again = tmp_path / "again.jsonl"
    clash = dict(batches["theme0"][1], question="A different question about kettles and lamps?")
    again.write_text(json.dumps(batches["theme0"][0]) + "\n" + json.dumps(clash) + "\n")
    result = invoke(ws, "--pairs", str(again), "--base-model", "/nonexistent/model", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pairs_read"] == 32 and report["duplicates_dropped"] == 2
    assert report["duplicates"] == [f"theme0-000 ({again}:1)", f"theme0-001 ({again}:2)"]
    assert "reuse an id with a different question" in result.stderr and f"{again}:2" in result.stderr


def test_a_pairs_file_named_twice_is_read_once(ws):
    write_pairs(ws, synthetic_pairs([30]))
    inside = ws / "data" / "pairs" / "theme0.jsonl"
    result = invoke(ws, "--pairs", str(inside), "--pairs", str(inside), "--base-model", "/nonexistent/model", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["pairs_read"] == 30


def test_fewer_examples_than_the_batch_size_gives_both_numbers(ws):
    write_pairs(ws, synthetic_pairs([5]))
    (ws / "data" / "train.jsonl").write_text('{"messages": []}\n')
    result = invoke(ws, "--base-model", "/nonexistent/model")
    assert result.exit_code == 1
    assert "Only 3 training example(s) for a batch size of 4" in result.stderr
    # Nothing half-written: the earlier file is untouched.
    assert (ws / "data" / "train.jsonl").read_text() == '{"messages": []}\n'


def test_a_model_without_a_chat_template_is_refused(ws, models, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(models["chatml"], plain)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    write_pairs(ws, synthetic_pairs([30]))
    result = invoke(ws, "--base-model", str(plain))
    assert result.exit_code == 1 and "no chat template" in result.stderr


def test_no_profile_gives_a_generic_prompt(ws):
    (ws / "profile.md").unlink()
    write_pairs(ws, synthetic_pairs([30]))
    result = invoke(ws, "--base-model", "/nonexistent/model", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["system_prompt"].startswith("You are the author's thinking partner.")
    assert "no profile.md" in report["system_prompt_source"]


def test_missing_pairs_file(ws):
    result = invoke(ws, "--pairs", str(ws / "nope.jsonl"))
    assert result.exit_code == 1 and "nope.jsonl does not exist" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--test-fraction", "1.5"], "test_fraction is 1.5"),
    (["--valid-fraction", "-0.1"], "valid_fraction is -0.1"),
    (["--valid-fraction", "0.5", "--test-fraction", "0.45"], "leave too little to train on"),
])
def test_bad_fractions(ws, args, message):
    write_pairs(ws, synthetic_pairs([30]))
    result = invoke(ws, *args)
    assert result.exit_code == 1 and message in result.stderr


def test_workspace_locked(ws, hold_lock):
    write_pairs(ws, synthetic_pairs([30]))
    hold_lock(ws, "train")
    result = invoke(ws)
    assert result.exit_code == 1 and "Another mlx-partner command (train" in result.stderr


def test_help_has_an_example():
    result = CliRunner().invoke(cli, ["dataset", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "--pairs" in result.output
