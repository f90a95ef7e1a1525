"""Tests for `eval`: the metric functions (tables), the PNG chart, and the command on the tiny model."""

from __future__ import annotations

import io
import json
import math
import struct
import zlib

import pytest

from mlx_partner.decline import DECLINE_PHRASE as ABSTAIN_PHRASE
from mlx_partner.decline import is_decline as is_abstention
from mlx_partner.evaluate.examples import EvalExample, example_key, select_examples
from mlx_partner.evaluate.metrics import fit_style, lcs_length, rouge_l, word_f1, words
from mlx_partner.evaluate.probes import probe_questions
from mlx_partner.evaluate.summary import compare, summarize
from mlx_partner.plots import bar_chart


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World!", ["hello", "world"]),
        ("Don't stop", ["don't", "stop"]),
        ("It\u2019s fine", ["it's", "fine"]),
        ("snake_case and 42", ["snake", "case", "and", "42"]),
        ("", []),
    ],
)
def test_words(text, expected):
    assert words(text) == expected


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ("the cat sat", "the cat sat", 1.0),
        ("", "", 1.0),
        ("", "something", 0.0),
        ("dog", "cat", 0.0),
        ("the cat", "the cat sat on the mat", 2 * (1.0 * (2 / 6)) / (1.0 + 2 / 6)),
        # counts are clipped: "the the the" shares only two "the" with the reference
        ("the the the", "the cat the", 2 * (2 / 3) * (2 / 3) / (4 / 3)),
        ("The CAT!", "the cat", 1.0),
    ],
)
def test_word_f1(pred, ref, expected):
    assert word_f1(pred, ref) == pytest.approx(expected)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("abcde", "ace", 3),
        ("abc", "abc", 3),
        ("abc", "def", 0),
        ("", "abc", 0),
        ("ab", "ba", 1),
        ("axbxc", "abc", 3),
    ],
)
def test_lcs_length(a, b, expected):
    assert lcs_length(list(a), list(b)) == expected
    assert lcs_length(list(b), list(a)) == expected


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ("the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("", "", 1.0),
        ("mat", "", 0.0),
        ("cat the", "the cat", 0.5),  # order matters, unlike F1
        ("the cat was sitting on the mat", "the cat sat on the mat", 2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6)),
    ],
)
def test_rouge_l(pred, ref, expected):
    assert rouge_l(pred, ref) == pytest.approx(expected)


def test_rouge_l_differs_from_f1_on_order():
    assert word_f1("cat the", "the cat") == 1.0
    assert rouge_l("cat the", "the cat") == 0.5


@pytest.mark.parametrize(
    "answer, expected",
    [
        (ABSTAIN_PHRASE + ".", True),
        ("I haven't written about cryptocurrency, so I won't guess.", True),
        ("That's not something I've written about.", True),
        ("Honestly, I don't know.", True),
        ("I have not really thought about opera.", True),
        ("That's outside what I've written.", True),
        ("My notes don't cover tax law.", True),
        ("I can't speak to that.", True),
        ("The starter is a calendar: feed it at the same hour.", False),
        ("Write it down, then rewrite it in your own words.", False),
        ("I have written about glue before.", False),
    ],
)
def test_is_abstention(answer, expected):
    assert is_abstention(answer) is expected


def test_system_prompt_asks_for_what_the_probe_detects():
    from mlx_partner.dataset.system_prompt import system_prompt_from_profile

    prompt = system_prompt_from_profile("I am Ada Lovelace. I write about engines and poetry.")
    assert ABSTAIN_PHRASE in prompt
    assert is_abstention(ABSTAIN_PHRASE)


def test_probe_questions_skip_topics_in_the_sources():
    corpus = ["I love the opera, Wagner most of all. Also football and the offside rule."]
    questions = probe_questions(corpus, 30, seed=0)
    assert questions
    assert not any("Wagner" in q or "offside" in q for q in questions)
    # Built-in and derived questions alternate, so a small n gets both kinds.
    assert probe_questions(corpus, 30, seed=0) == questions
    assert probe_questions(corpus, 2, seed=0) == questions[:2]
    assert probe_questions(corpus, 0) == []
    assert len(set(questions)) == len(questions)


def test_style_similarity_prefers_the_authors_voice():
    author = [
        "The bench is an argument about who may stay. A street that offers a seat says: linger here.\n\n"
        "Desire lines are drafts; the path the walkers wear is the city's honest first version.",
        "I glue what I cannot sew, and every join of glue is a confession that I gave up on the seam.\n\n"
        "Three tools will repair most things: a needle, a screwdriver, and patience.",
    ]
    model = fit_style(author)
    close = "A bench is an argument; the street that offers a seat says linger, and desire lines are drafts."
    far = "Quarterly EBITDA guidance was revised upward following strong SaaS subscription growth."
    assert 0.0 <= model.similarity(far) < model.similarity(close) <= 1.0
    assert model.similarity(author[0]) > model.similarity(close)
    assert model.similarity("") == 0.0
    # Deterministic (crc32 hashing, not Python's salted hash).
    assert fit_style(author).similarity(close) == model.similarity(close)


def test_fit_style_needs_sources():
    from mlx_partner.errors import SourceError

    with pytest.raises(SourceError):
        fit_style([])


def _ex(q: str, a: str, split: str = "test") -> EvalExample:
    messages = ({"role": "system", "content": "S"}, {"role": "user", "content": q}, {"role": "assistant", "content": a})
    return EvalExample(example_key(messages), split, messages)


def test_example_key_ignores_the_system_prompt():
    a = [{"role": "system", "content": "one"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    b = [{"role": "system", "content": "two"}, *a[1:]]
    c = [*a[:2], {"role": "assistant", "content": "other"}]
    assert example_key(a) == example_key(b) != example_key(c)


def test_select_examples_is_seeded_and_prefers_earlier_keys():
    examples = [_ex(f"q{i}", f"a{i}") for i in range(30)]
    first = select_examples(examples, 5, seed=1)
    assert first == select_examples(list(reversed(examples)), 5, seed=1)
    assert first != select_examples(examples, 5, seed=2)
    prefer = [examples[7].key, examples[3].key]
    picked = select_examples(examples, 5, seed=1, prefer=prefer)
    assert [e.key for e in picked[:2]] == prefer
    # Adding examples does not push out the preferred ones.
    more = examples + [_ex(f"new{i}", "x") for i in range(50)]
    assert [e.key for e in select_examples(more, 5, seed=1, prefer=prefer)][:2] == prefer
    assert select_examples(examples, 0) == []


def _scores(loss: dict, answers: dict, probes: dict) -> dict:
    return {"loss": loss, "answers": answers, "probes": probes}


def test_summarize_weights_loss_by_tokens_and_restricts_to_keys():
    scores = _scores(
        {"a": {"loss_sum": 10.0, "tokens": 10, "split": "test"}, "b": {"loss_sum": 30.0, "tokens": 10, "split": "test"},
         "c": {"loss_sum": 5.0, "tokens": 5, "split": "valid"}},
        {"a": {"answer": "x", "f1": 0.5, "rouge_l": 0.25, "style": 0.1}, "b": {"answer": "y", "f1": 1.0, "rouge_l": 0.75, "style": 0.3}},
        {"q1": {"answer": "I don't know", "abstained": True}, "q2": {"answer": "Sure!", "abstained": False}},
    )
    s = summarize(scores)
    assert s["test"]["loss"] == pytest.approx(2.0)
    assert s["test"]["perplexity"] == pytest.approx(math.e**2)
    assert s["valid"]["loss"] == pytest.approx(1.0)
    assert s["f1"] == pytest.approx(0.75) and s["rouge_l"] == pytest.approx(0.5)
    assert s["grounded"] == 0.5 and s["probes"] == 2
    only_a = summarize(scores, {"a"})
    assert only_a["test"]["loss"] == pytest.approx(1.0) and only_a["f1"] == 0.5 and only_a["valid"]["examples"] == 0


def test_compare_uses_only_shared_pairs():
    def metrics(run, keys, f1):
        return {"run": run, "scores": {"tuned": _scores(
            {k: {"loss_sum": 1.0, "tokens": 1, "split": "test"} for k in keys},
            {k: {"answer": "", "f1": f1, "rouge_l": f1, "style": f1} for k in keys}, {})}}

    old = metrics("run-1", ["a", "b"], 0.2)
    new = metrics("run-2", ["a", "b", "c"], 0.6)
    new["scores"]["tuned"]["answers"]["c"]["f1"] = 0.0  # a new pair, not in the old eval: left out
    out = compare(old, new)
    assert out["shared_answers"] == 2 and out["shared_test_loss"] == 2
    assert out["old_summary"]["f1"] == pytest.approx(0.2) and out["new_summary"]["f1"] == pytest.approx(0.6)


def _decode_png(data: bytes):
    """(width, height, rows): each row a filter byte (0), then RGB pixels, however it was encoded."""
    from PIL import Image

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        pos += 12 + length
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    pixels = image.tobytes()
    raw = b"".join(b"\0" + pixels[y * 3 * width : (y + 1) * 3 * width] for y in range(height))
    assert len(raw) == height * (1 + 3 * width)
    return width, height, raw


def test_bar_chart_draws_bars_of_the_right_height(tmp_path):
    path = tmp_path / "chart.png"
    bar_chart(path, "", ["F1", "STYLE"], {"base": [0.0, 0.5], "run-1": [1.0, 0.25]}, "score", ylim=(0.0, 1.0))
    width, height, raw = _decode_png(path.read_bytes())
    stride = 1 + 3 * width
    blue = bytes((46, 110, 190))
    rows_with_blue = sum(1 for y in range(height) if blue in raw[y * stride + 1 : (y + 1) * stride])
    assert rows_with_blue >= 100  # the full-height bar (plus the legend swatch)


# --- the command, on the tiny model ------------------------------------------------------------

def _invoke(ws, *args):
    from click.testing import CliRunner

    from mlx_partner.cli import cli

    return CliRunner().invoke(cli, ["-w", str(ws), *args])


@pytest.fixture(scope="module")
def trained(trained_example_workspace, tmp_path_factory):
    """A workspace with the example's hand-written pairs and probes, a dataset and one short run."""
    return trained_example_workspace(tmp_path_factory.mktemp("eval") / "ws")


EVAL_ARGS = ("--limit", "3", "--probes", "2", "--near-probes", "3", "--max-tokens", "6", "--quiet")


def test_eval_writes_report_chart_and_metrics(trained):
    result = _invoke(trained, "eval", *EVAL_ARGS)
    assert result.exit_code == 0, result.output
    out = trained / "eval" / "run-1"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["version"] == 3
    for label in ("base", "tuned"):
        s = metrics["summary"][label]
        assert s["answers"] == 3 and s["probes"] == 2 and s["near_probes"] == 3
        assert s["answerable"] + s["boundary_answers"] == 3
        for key in ("near_declines", "grounded", "quotes_verified"):
            assert s[key] is None or 0 <= s[key] <= 1
        assert len(metrics["scores"][label]["near_probes"]) == 3
        assert s["test"]["examples"] > 0 and s["valid"]["examples"] > 0
        assert s["test"]["perplexity"] == pytest.approx(math.exp(s["test"]["loss"]))
        assert 0 <= s["f1"] <= 1 and 0 <= s["rouge_l"] <= 1 and 0 <= s["style"] <= 1
    # The adapters change the model: the tuned loss differs from the base's.
    assert metrics["summary"]["base"]["test"]["loss"] != metrics["summary"]["tuned"]["test"]["loss"]
    assert metrics["reference_style"] > metrics["summary"]["base"]["style"]  # the author's answers sound like the author
    width, height, _ = _decode_png((out / "chart.png").read_bytes())
    assert width > 100 and height > 100
    report = (out / "report.md").read_text()
    assert "![base and tuned scores](chart.png)" in report and "| test loss" in report
    assert "## Near-domain probes" in report and "## Far probes" in report and "## Retrieval" in report
    for row in ("test loss", "test perplexity", "valid loss", "answer F1", "ROUGE-L", "style similarity",
                "declines near-domain probes", "declines far probes", "false declines", "quoted spans"):
        assert row in result.output
    # Retrieval does not depend on the model: measured once, printed under the table.
    retrieval = metrics["retrieval"]
    assert retrieval["questions"] > 0 and 0 <= retrieval["accuracy"] <= 1
    assert f"{retrieval['hits']}/{retrieval['questions']} held-out questions" in result.output
    assert retrieval["probes"]["probes"] == 3 and retrieval["probes"]["covered"] == 0
    assert "report.md" in result.output


def test_eval_is_deterministic(trained, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws, symlinks=True)
    shutil.rmtree(ws / "eval", ignore_errors=True)
    first = _invoke(ws, "eval", *EVAL_ARGS)
    a = json.loads((ws / "eval" / "run-1" / "metrics.json").read_text())
    shutil.rmtree(ws / "eval")  # no cache: everything is computed again
    second = _invoke(ws, "eval", *EVAL_ARGS)
    b = json.loads((ws / "eval" / "run-1" / "metrics.json").read_text())
    assert first.exit_code == second.exit_code == 0
    assert a["summary"] == b["summary"] and a["scores"] == b["scores"]
    assert first.output == second.output


def test_score_model_reuses_cached_answers(trained):
    from mlx_partner.config import load_settings
    from mlx_partner.evaluate.run import run_eval
    from mlx_partner.workspace import Workspace

    ws = Workspace.at(trained)
    settings = load_settings(ws.config_path)
    first = run_eval(ws, settings, "run-1", limit=2, probes=1, max_tokens=6, progress=False)
    # Plant a marker in the stored answers: a second eval under the same settings must reuse them.
    metrics = json.loads((first.out_dir / "metrics.json").read_text())
    for label in ("base", "tuned"):
        for record in metrics["scores"][label]["answers"].values():
            record["answer"] = "I haven't written about that."
    (first.out_dir / "metrics.json").write_text(json.dumps(metrics))
    again = run_eval(ws, settings, "run-1", limit=2, probes=1, max_tokens=6, progress=False)
    answers = [r["answer"] for r in again.metrics["scores"]["tuned"]["answers"].values()]
    assert answers == ["I haven't written about that."] * 2
    # Other settings: computed afresh.
    fresh = run_eval(ws, settings, "run-1", limit=2, probes=1, max_tokens=5, progress=False)
    assert "I haven't written about that." not in [r["answer"] for r in fresh.metrics["scores"]["tuned"]["answers"].values()]


def test_eval_without_a_run(tmp_path):
    result = _invoke(tmp_path, "eval")
    assert result.exit_code == 1
    assert "no trained run" in result.output and "mlx-partner train" in result.output
    assert "Traceback" not in result.output


def test_eval_of_an_unknown_run(trained):
    result = _invoke(trained, "eval", "--run", "nope")
    assert result.exit_code == 1 and "No run named 'nope'" in result.output


def test_eval_when_the_base_model_is_missing(trained, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws, symlinks=True)
    manifest_path = ws / "adapters" / "run-1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["base_model"] = manifest["base_model_path"] = str(tmp_path / "gone-model")
    manifest_path.write_text(json.dumps(manifest))
    result = _invoke(ws, "eval", *EVAL_ARGS)
    assert result.exit_code == 1
    assert f"Run run-1 was trained on base model {tmp_path / 'gone-model'}, which is not available here" in result.output
    assert "Traceback" not in result.output


def test_eval_without_a_dataset(trained, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws, symlinks=True)
    for split in ("test", "valid"):
        (ws / "data" / f"{split}.jsonl").unlink()
    result = _invoke(ws, "eval", *EVAL_ARGS)
    assert result.exit_code == 1 and "mlx-partner dataset" in result.output


def test_eval_compare_needs_an_evaluated_run(trained):
    result = _invoke(trained, "eval", "--compare", "run-0", *EVAL_ARGS)
    assert result.exit_code == 1 and "Run run-0 has no evaluation" in result.output


def test_batched_loss_equals_one_by_one(tiny_model):
    from mlx_partner.evaluate.scoring import answer_loss, answer_losses
    from mlx_partner.models import load_model

    loaded = load_model(tiny_model)
    conversations = [
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Why benches?"},
         {"role": "assistant", "content": "Because a street with benches says you may stay."}],
        [{"role": "user", "content": "Short?"}, {"role": "assistant", "content": "Yes."}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "What is a desire line, and why is it a draft? " * 3},
         {"role": "assistant", "content": "The path the walkers wear is the city's honest first version. " * 4}],
    ]
    batched = answer_losses(loaded.model, loaded.tokenizer, conversations)
    single = [answer_loss(loaded.model, loaded.tokenizer, c) for c in conversations]
    for (total, count), (total1, count1) in zip(batched, single, strict=True):
        assert count == count1 > 0
        assert total == pytest.approx(total1, rel=1e-4)
    # Only the answer counts: the same answer after a longer prompt has the same number of tokens.
    longer = [{"role": "system", "content": "S " * 50}, *conversations[1][0:]]
    assert answer_losses(loaded.model, loaded.tokenizer, [longer])[0][1] == single[1][1]
