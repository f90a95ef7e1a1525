"""[grounded-chat]: the run's index of her writing, cited passages under each answer, the
not-grounded warning, quote checks, passages in the prompt (--rag and `[dataset] passages`), and
the bad inputs around them; on the example corpus (sources/, 12 essays) and the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.chat.citations import (
    NOT_GROUNDED,
    Citation,
    Cited,
    citation_lines,
    quoted_spans,
    unverified_quotes,
)
from mlx_partner.chat.index import open_citer
from mlx_partner.chat.passages import cite, closest, excerpt, rag_passages
from mlx_partner.chat.target import resolve_target
from mlx_partner.cli import cli
from mlx_partner.config import Settings
from mlx_partner.dataset.passages import choose_passages
from mlx_partner.grounding import normalise
from mlx_partner.prompts import RAG_HEADER, RAG_PASSAGES, question_of, with_passages
from mlx_partner.retrieval import INDEX_DIR, SourceIndex, build_index
from mlx_partner.sources.documents import load_documents
from mlx_partner.workspace import Workspace, read_jsonl

REPO = Path(__file__).resolve().parent.parent
OFF_TOPIC = "Which football club should I support?"
ON_TOPIC = "Why do you count the benches on a street?"


@pytest.fixture(scope="module")
def documents():
    return load_documents(REPO / "sources")[0]


@pytest.fixture(scope="module")
def index(documents):
    pairs, _ = read_jsonl(REPO / "examples" / "pairs.jsonl")
    return build_index(documents, answerable=[p["question"] for p in pairs])


@pytest.fixture(scope="module")
def texts(documents):
    return [d.text for d in documents]


# --- retrieval on the example corpus -------------------------------------------------------------

# One question per essay, written for this test (none is in examples/pairs.jsonl), mostly in words
# other than the essay's own. Measured: 11 of 12 find their essay first; the miss is the
# highlighter question, which "Nobody Can Read for You" wins by mentioning "my old five-colour
# highlighter" (its own essay is second and third). The test asks for 10 of 12: the issue's bar
# (the top passage from the cited essay for at least 80% of questions), rounded up.
RETRIEVAL_TABLE = [
    ("Why should a baker only alter a single variable each time she bakes?", "bread/one-change-per-loaf.md"),
    ("How does feeding a sourdough starter end up dictating your weekly schedule?", "bread/the-starter-is-a-calendar.md"),
    ("What can a flat, dense, failed loaf teach a beginner?", "bread/the-ugly-loaf.md"),
    ("Is it a good idea to read AI-generated summaries of the week's readings instead of the texts?",
     "notebooks/nobody-can-read-for-you.md"),
    ("Why do you keep index cards in an old box instead of using a note-taking app?", "notebooks/the-shoebox.md"),
    ("What replaced your colour-coded highlighters when you read?", "notebooks/why-i-stopped-highlighting.md"),
    ("What does it tell you when a phone is held together with adhesive instead of screws?",
     "repair/glue-is-a-confession.md"),
    ("Which tools does someone need to keep a bicycle running?", "repair/three-tools.md"),
    ("What have you learned volunteering at the neighbourhood repair cafe?", "repair/thursday-repair-cafe.md"),
    ("Do the push buttons at pedestrian crossings actually do anything?", "streets/against-the-beg-button.md"),
    ("What should planners do about the muddy shortcuts people wear across a lawn?", "streets/desire-lines-are-drafts.md"),
    ("How can you judge whether a street welcomes people who want to sit down and rest?",
     "streets/the-bench-is-an-argument.md"),
]
MIN_HITS = 10


def test_the_top_passage_is_from_the_right_essay(index):
    assert len({doc for _, doc in RETRIEVAL_TABLE}) == 12
    misses = [(q, doc, index.search(q, 1)[0].passage.doc_id) for q, doc in RETRIEVAL_TABLE
              if index.search(q, 1)[0].passage.doc_id != doc]
    hits = len(RETRIEVAL_TABLE) - len(misses)
    print(f"retrieval hit rate on the example corpus: {hits}/{len(RETRIEVAL_TABLE)}")
    assert hits >= MIN_HITS, misses
    # Every question is also one her writing covers (the answers must not be flagged ungrounded).
    assert sum(index.covers(q) for q, _ in RETRIEVAL_TABLE) >= MIN_HITS
    # Chat's own ranking (passage and document evidence, question alone): the same bar; measured 11/12.
    ranked = sum(closest(index, q)[0][0].doc_id == doc for q, doc in RETRIEVAL_TABLE)
    print(f"chat's ranking, question alone: {ranked}/{len(RETRIEVAL_TABLE)}")
    assert ranked >= MIN_HITS


# --- what goes under an answer ---------------------------------------------------------------------


def test_cited_passages_rest_on_the_question_and_the_answer(index, texts, documents):
    answer = "Count the benches. A street without benches says you are traffic, and armrests are a confession."
    c = cite(index, texts, ON_TOPIC, answer)
    assert c.grounded and not c.declined and 1 <= len(c.passages) <= 3
    assert c.passages[0].path == "streets/the-bench-is-an-argument.md"
    assert [p.score for p in c.passages] == sorted((p.score for p in c.passages), reverse=True)
    by_id = {d.id: d for d in documents}
    for p in c.passages:  # a verbatim excerpt, on the line given (of the document's text here)
        doc = by_id[p.path]
        assert normalise(p.excerpt.removesuffix(" ...")) in normalise(doc.text)
        assert p.excerpt.split()[0] in doc.text.splitlines()[p.line - 1]
        assert p.title == doc.title and len(p.excerpt) <= 204
    lines = citation_lines(c)
    assert lines[0] == "From your writing:" and lines[1].startswith("[1] streets/the-bench-is-an-argument.md:")
    assert NOT_GROUNDED not in " ".join(lines)


def test_nothing_close_is_one_warning_line(index, texts):
    c = cite(index, texts, OFF_TOPIC, "Support the club your grandmother supported.")
    assert not c.grounded and c.passages == () and c.coverage < index.threshold
    assert citation_lines(c) == [NOT_GROUNDED]


def test_a_decline_shows_the_nearest_passages_as_the_pointer(index, texts):
    c = cite(index, texts, "What do you think about heritage wheat varieties for sourdough?",
             "I haven't written about that. I did write about feeding a starter.")
    assert c.declined and c.passages
    assert citation_lines(c)[0] == "What I did write nearby:"
    assert all(p.path.startswith("bread/") for p in c.passages)


def test_the_line_is_the_line_in_the_file(tmp_path):
    ws = Workspace.at(tmp_path)
    shutil.copytree(REPO / "sources", ws.sources_dir)
    target = resolve_target(ws, model=str(tmp_path))
    citer = open_citer(ws, target)
    c = citer.cite(ON_TOPIC, "Benches: count them on a Sunday morning.")
    for p in c.passages:
        file_line = (ws.sources_dir / p.path).read_text().splitlines()[p.line - 1]
        assert p.excerpt.split()[0] in file_line
    assert citer.offsets["streets/the-bench-is-an-argument.md"] == 5  # its front matter and a blank line


def test_excerpt_is_the_sentence_that_matters(index):
    passage = next(p for p in index.passages if "most honest single measure" in p.text)
    text, line = excerpt(passage, {"honest", "measure"})
    assert text.startswith("Here is my claim: the number of public benches")
    assert line >= passage.line


# --- quotes ------------------------------------------------------------------------------------------

VERBATIM = "the number of public benches on a street is the most honest single measure of whether a city wants people on it"


@pytest.mark.parametrize("answer, spans", [
    (f'As I put it, "{VERBATIM}".', [VERBATIM]),
    ("As I put it, \u201cthe ugly loaf is where the information is.\u201d", ["the ugly loaf is where the information is."]),
    ('Not the word "liveable" in the plan, not "defensive design" either.', []),  # scare quotes: under 4 words
    ('You asked "is it worth repairing a kettle", and I say "open it first, then decide".',
     ["open it first, then decide"]),  # the question quoted back is not her words
    ('One "unclosed quote that runs on and on', []),
    ('"a b c d" and again "a b c d"', ["a b c d"]),
])
def test_quoted_spans(answer, spans):
    assert quoted_spans(answer, question="Is it worth repairing a kettle?") == spans


def test_a_verbatim_quote_passes_and_an_altered_one_is_flagged(texts):
    assert unverified_quotes(f'I wrote that "{VERBATIM}."', texts) == []
    altered = VERBATIM.replace("most honest", "least reliable")
    assert unverified_quotes(f'I wrote that "{altered}."', texts) == [altered + "."]
    negated = "a desire line is not a draft that the public wrote for the planner"
    assert unverified_quotes(f"\u201c{negated}\u201d", texts) == [negated]


def test_an_unverified_quote_is_flagged_in_the_status_line(index, texts):
    c = cite(index, texts, ON_TOPIC, 'I always say "benches are the only thing a city ever needs".')
    assert c.unverified == ("benches are the only thing a city ever needs",)
    assert citation_lines(c)[-1] == 'Quoted, but not found in your writing: "benches are the only thing a city ever needs".'
    off = cite(index, texts, OFF_TOPIC, 'As my essay says, "football is the beautiful game of the people".')
    assert citation_lines(off, width=300) == [f'{NOT_GROUNDED} Quoted, but not found in your writing: '
                                              '"football is the beautiful game of the people".']
    assert Citation(unverified=("x y z w",)).to_json("a")["unverified_quotes"] == ["x y z w"]


def test_json_record_shape():
    c = Citation((Cited("a/b.md", "B", "An excerpt.", 0.9, 7),), True)
    assert c.to_json("The answer.") == {
        "answer": "The answer.", "grounded": True, "unverified_quotes": [],
        "passages": [{"path": "a/b.md", "title": "B", "excerpt": "An excerpt.", "score": 0.9, "line": 7}]}


# --- passages in the prompt: one renderer for training and chat ---------------------------------------


def test_with_passages_renders_numbered_passages_before_the_question(index):
    chosen = rag_passages(index, ON_TOPIC)
    text = with_passages(ON_TOPIC, chosen)
    assert text.startswith(RAG_HEADER + "\n[1] ") and text.endswith(f"\n\nQuestion: {ON_TOPIC}")
    assert text.count("\n[") == RAG_PASSAGES and f"({chosen[0].doc_id})" in text
    assert with_passages("Q?", []) == "Q?"
    assert question_of(text) == ON_TOPIC and question_of(ON_TOPIC) == ON_TOPIC
    assert question_of(f"SYSTEM PROMPT\n\n{text}") == ON_TOPIC  # folded in by a template with no system role


def test_training_passages_hold_the_pairs_own_and_distractors(index):
    quote = "the number of public benches on a street is the most honest single measure"
    cited = ["streets/the-bench-is-an-argument.md"]
    chosen = choose_passages(index, ON_TOPIC, cited, [quote], key="0:hand-001")
    assert len(chosen) == RAG_PASSAGES
    own = [p for p in chosen if p.doc_id in cited]
    assert len(own) == 1 and quote in own[0].text
    assert choose_passages(index, ON_TOPIC, cited, [quote], key="0:hand-001") == chosen  # seeded
    orders = {tuple(p.doc_id for p in choose_passages(index, ON_TOPIC, cited, [quote], key=f"0:{i}")).index(cited[0])
              for i in range(12)}
    assert len(orders) > 1  # the right one is not always in the same place
    boundary = choose_passages(index, "What do you think of rye flour?", [], [], key="0:b")
    assert len(boundary) == RAG_PASSAGES  # nothing of its own: the nearest passages, none that answers


# --- the run: train saves the index, fuse copies it, chat cites it -------------------------------------


def _make_workspace(root: Path, tiny_model: Path, passages: bool = False) -> Settings:
    shutil.copy(REPO / "profile.md", root / "profile.md")
    shutil.copytree(REPO / "sources", root / "sources")
    shutil.copytree(REPO / "examples", root / "examples")
    settings = Settings().override("train", base_model=str(tiny_model), iters=1, batch_size=2, val_batches=1,
                                   steps_per_eval=1)
    return settings.override("dataset", passages=passages)


@pytest.fixture(scope="module")
def grounded_ws(tiny_model, tmp_path_factory) -> Path:
    """The example workspace with one short run (r1) on the tiny model, and its fused model."""
    from mlx_partner.dataset.write import run_dataset
    from mlx_partner.fuse import run_fuse
    from mlx_partner.train.run import run_train

    root = tmp_path_factory.mktemp("grounded-ws")
    settings = _make_workspace(root, tiny_model)
    ws = Workspace.at(root)
    run_dataset(ws, settings, extra_pairs=[root / "examples" / "pairs.jsonl"], base_model=str(tiny_model))
    assert run_train(ws, settings, run_name="r1", progress=False).status == "finished"
    run_fuse(ws, run_name="r1", log=lambda _line: None)
    return root


@pytest.fixture
def ws_copy(grounded_ws, tmp_path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(grounded_ws, root, symlinks=True)
    return root


def test_train_saves_a_calibrated_index_and_fuse_copies_it(grounded_ws):
    ws = Workspace.at(grounded_ws)
    run_dir = ws.adapters_dir / "r1"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    record = manifest["retrieval"]
    index = SourceIndex.load(run_dir / INDEX_DIR)
    assert index is not None and record["passages"] == len(index.passages) and record["documents"] == 12
    train = json.loads((ws.data_dir / "dataset.json").read_text())["examples"]["train"]
    answerable = [e for e in train if e["kind"] != "boundary"]  # a boundary pair's question is not answered
    assert record["calibration"]["questions"] == len(answerable) and record["calibration"]["method"] == "p10"
    assert 0.15 <= index.threshold < 0.5
    fused = SourceIndex.load(ws.models_dir / "r1" / INDEX_DIR)
    assert fused is not None and fused.fingerprint == index.fingerprint


def test_the_index_loads_in_well_under_a_second(grounded_ws):
    ws = Workspace.at(grounded_ws)
    target = resolve_target(ws)
    open_citer(ws, target)  # bm25s imported, as chat has after loading mlx-lm
    started = time.perf_counter()
    citer = open_citer(ws, target)
    took = time.perf_counter() - started
    print(f"index load, fingerprint check and line offsets: {took * 1000:.0f} ms")
    assert citer.on and citer.notes == [] and took < 0.5


def chat(ws: Path, *args: str, input: str | None = None):
    return CliRunner().invoke(cli, ["-w", str(ws), "chat", "--temp", "0", "--max-tokens", "8", *args], input=input)


def test_repl_shows_passages_the_warning_and_toggles_them(grounded_ws):
    lines = [ON_TOPIC, OFF_TOPIC, "/sources", ON_TOPIC, "/sources", ON_TOPIC, "/quit"]
    result = chat(grounded_ws, input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "Loading run r1 (fused model)" in err and "Citations are off" not in err
    assert err.count("From your writing:") == 2  # the first and last on-topic answers, not the hidden one
    assert "[1] streets/the-bench-is-an-argument.md:" in err
    assert err.count(NOT_GROUNDED) == 1
    assert "(Passages hidden" in result.stdout and "(Passages of your writing are shown" in result.stdout
    assert "From your writing" not in result.stdout  # stdout stays the answers
    assert err.index("From your writing:") < err.index(NOT_GROUNDED)


def test_save_keeps_the_passages_and_the_warning_under_each_answer(grounded_ws, tmp_path):
    saved = tmp_path / "chat.md"
    lines = [ON_TOPIC, OFF_TOPIC, "/sources", ON_TOPIC, f"/save {saved}", "/quit"]
    result = chat(grounded_ws, input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    turns = saved.read_text().split("## You")[1:]
    assert len(turns) == 3
    assert "> From your writing:" in turns[0] and "> 1. `streets/the-bench-is-an-argument.md:" in turns[0]
    assert f"> _{NOT_GROUNDED}_" in turns[1] and "From your writing" not in turns[1]
    # Hidden on screen by /sources, kept in the save: it is the record she checks later.
    assert "> 1. `streets/the-bench-is-an-argument.md:" in turns[2]


def test_json_output_parses(grounded_ws):
    result = chat(grounded_ws, "--prompt", ON_TOPIC, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert set(record) == {"answer", "passages", "grounded", "unverified_quotes"}
    assert record["grounded"] is True and record["passages"][0]["path"] == "streets/the-bench-is-an-argument.md"
    assert set(record["passages"][0]) == {"path", "title", "excerpt", "score", "line"}
    scores = [p["score"] for p in record["passages"]]
    assert scores == sorted(scores, reverse=True) and 0.5 < scores[0] <= 1.0
    off = json.loads(chat(grounded_ws, "--prompt", OFF_TOPIC, "--json").stdout)
    assert off["grounded"] is False and off["passages"] == []


def test_no_sources_flag_and_setting(grounded_ws, monkeypatch):
    quiet = chat(grounded_ws, "--prompt", ON_TOPIC, "--no-sources")
    assert quiet.exit_code == 0 and "From your writing" not in quiet.stderr
    monkeypatch.setenv("MLX_PARTNER_CHAT_SOURCES", "false")
    assert "From your writing" not in chat(grounded_ws, "--prompt", ON_TOPIC).stderr
    assert "From your writing" in chat(grounded_ws, "--prompt", ON_TOPIC, "--sources").stderr
    assert "--sources / --no-sources" in CliRunner().invoke(cli, ["chat", "--help"]).output


def test_rag_puts_the_retrieved_passages_in_the_prompt(grounded_ws, tiny_model):
    from mlx_partner.chat.session import ChatSession
    from mlx_partner.models import load_model

    ws = Workspace.at(grounded_ws)
    citer = open_citer(ws, resolve_target(ws), rag=True)
    chosen = citer.context(ON_TOPIC)
    assert len(chosen) == RAG_PASSAGES
    lm = load_model(tiny_model)
    s = ChatSession(lm.model, lm.tokenizer, "S", temperature=0.0, max_tokens=4, window=2048)
    s.reply(ON_TOPIC, chosen)
    assert s.stats.prompt_tokens == len(s.encode([], with_passages(ON_TOPIC, chosen)))
    assert s.history == [(ON_TOPIC, s.history[0][1])]  # the history keeps the question alone
    result = chat(grounded_ws, "--prompt", ON_TOPIC, "--rag", "--json")
    assert result.exit_code == 0, result.output and json.loads(result.stdout)["passages"]


def test_dataset_with_passages_trains_and_chats_the_same_way(tiny_model, tmp_path):
    from mlx_partner.dataset.write import run_dataset
    from mlx_partner.train.run import run_train

    settings = _make_workspace(tmp_path, tiny_model, passages=True)
    ws = Workspace.at(tmp_path)
    run_dataset(ws, settings, extra_pairs=[tmp_path / "examples" / "pairs.jsonl"], base_model=str(tiny_model))
    records, _ = read_jsonl(ws.split_path("train"))
    users = [r["messages"][-2]["content"] for r in records]
    assert all(u.startswith(RAG_HEADER) and "\n\nQuestion: " in u for u in users)
    pairs = {p["question"]: p for p in read_jsonl(tmp_path / "examples" / "pairs.jsonl")[0]}
    for u in users:  # each holds the passage of its own quote (a boundary pair may have none)
        pair = pairs[question_of(u)]
        assert all(f"({doc})" in u for doc in pair["sources"][:1])
    assert sum(bool(pairs[question_of(u)]["sources"]) for u in users) >= len(users) * 0.8
    assert run_train(ws, settings, run_name="rag", progress=False).status == "finished"
    result = chat(tmp_path, "--run", "rag", "--rag", "--prompt", ON_TOPIC, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["grounded"] is True


# --- bad input ---------------------------------------------------------------------------------------


def test_a_run_from_before_the_index_gets_one_built_once(ws_copy):
    ws = Workspace.at(ws_copy)
    shutil.rmtree(ws.adapters_dir / "r1" / INDEX_DIR)
    shutil.rmtree(ws.models_dir / "r1" / INDEX_DIR)
    first = chat(ws_copy, "--prompt", ON_TOPIC)
    assert first.exit_code == 0, first.output
    assert first.stderr.count("has no index of your writing") == 1 and "saved it in r1/retrieval/" in first.stderr
    assert "From your writing:" in first.stderr and "sources changed" not in first.stderr
    again = chat(ws_copy, "--prompt", ON_TOPIC)
    assert "has no index" not in again.stderr and "From your writing:" in again.stderr


def test_an_old_run_whose_sources_changed_says_citations_are_current(ws_copy):
    ws = Workspace.at(ws_copy)
    shutil.rmtree(ws.adapters_dir / "r1" / INDEX_DIR)
    shutil.rmtree(ws.models_dir / "r1" / INDEX_DIR)
    doc = ws.sources_dir / "bread" / "the-ugly-loaf.md"
    later = (ws.adapters_dir / "r1" / "adapters.safetensors").stat().st_mtime + 60
    os.utime(doc, (later, later))
    result = chat(ws_copy, "--prompt", ON_TOPIC)
    assert "citations come from the current sources" in result.stderr


def test_changed_sources_are_cited_as_they_are_now(ws_copy):
    ws = Workspace.at(ws_copy)
    doc = ws.sources_dir / "streets" / "the-bench-is-an-argument.md"
    doc.write_text(doc.read_text() + "\n\nA postscript: I counted the benches again in June, and found eleven.\n")
    result = chat(ws_copy, "--prompt", "How many benches did you count again in June?", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("citations come from the current sources") == 1
    assert any("found eleven" in p["excerpt"] for p in json.loads(result.stdout)["passages"])


@pytest.mark.parametrize("damage, why", [
    (lambda src: shutil.rmtree(src), "There is no sources folder"),
    (lambda src: [p.unlink() for p in src.rglob("*.md")], "Citations are off:"),
])
def test_missing_sources_turn_citations_off_and_chat_still_works(ws_copy, damage, why):
    damage(Workspace.at(ws_copy).sources_dir)
    result = chat(ws_copy, "--prompt", ON_TOPIC)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Citations are off")]
    assert why in line and "Traceback" not in result.output
    record = json.loads(chat(ws_copy, "--prompt", ON_TOPIC, "--json").stdout)
    assert record["passages"] == [] and record["citations_off"].startswith("Citations are off")
    repl = chat(ws_copy, input=f"{ON_TOPIC}\n/sources\n/quit\n")
    assert repl.exit_code == 0 and repl.stdout.count("Citations are off") == 1


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_an_empty_question_is_a_plain_usage_error(grounded_ws, prompt):
    result = chat(grounded_ws, "--prompt", prompt)
    assert result.exit_code == 2 and "--prompt is empty" in result.output
    assert "Traceback" not in result.output
    repl = chat(grounded_ws, input="   \n\n/quit\n")
    assert repl.exit_code == 0 and "From your writing" not in repl.stderr


def test_a_50_kb_paste_is_answered_and_placed_by_its_first_part(grounded_ws):
    # Her bench essay pasted whole, many times over, after the question: its first part is what
    # retrieval reads (a paste of words her writing never uses would read as not grounded).
    essay = (REPO / "sources" / "streets" / "the-bench-is-an-argument.md").read_text().split("---", 2)[2]
    paste = ON_TOPIC + " " + " ".join(essay.split()) * (50_000 // len(essay) + 1)
    assert len(paste) > 50_000
    result = chat(grounded_ws, "--prompt", paste, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["grounded"] and record["passages"][0]["path"] == "streets/the-bench-is-an-argument.md"
    assert "only its first" in result.stderr
    repl = chat(grounded_ws, input=paste + "\n/quit\n")
    assert repl.exit_code == 0 and "From your writing:" in repl.stderr


@pytest.mark.parametrize(("grounded", "declined", "heading", "status"), [
    (True, False, "From your writing:", None),
    (False, False, "From your writing:", NOT_GROUNDED),
    (True, True, "What I did write nearby:", None),
    # A decline of a question nothing she wrote is near: the pointer, and why it declined.
    (False, True, "What I did write nearby:", "Nothing in your writing is close to this question."),
])
def test_citation_lines_say_when_nothing_is_close(grounded, declined, heading, status):
    cited = Cited("repair/three-tools.md", "Three Tools", "A screwdriver, a glue, a needle.", 0.4, 3)
    lines = citation_lines(Citation((cited,), grounded=grounded, declined=declined), width=100)
    assert lines[0] == heading and lines[1].startswith("[1] repair/three-tools.md:3")
    if status is None:
        assert not any("Nothing in your writing" in line for line in lines)
    else:
        assert lines[-1] == status
