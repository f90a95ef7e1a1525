"""Chat: the session (KV-cache reuse, trimming, interrupts, reset) and the REPL through CliRunner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner.chat.repl import handle_command
from mlx_partner.chat.session import ChatSession, common_prefix, context_window
from mlx_partner.chat.target import ChatTarget, resolve_target
from mlx_partner.chat.transcript import transcript_markdown
from mlx_partner.cli import cli
from mlx_partner.errors import ModelError, PartnerError
from mlx_partner.workspace import Workspace

SYSTEM = "You are Oona, an essayist. Answer in her voice, briefly."


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from mlx_partner.models import load_model

    return load_model(tiny_model)


def session(loaded, **kw) -> ChatSession:
    opts = {"temperature": 0.0, "max_tokens": 12, "window": 2048}
    opts.update(kw)
    return ChatSession(loaded.model, loaded.tokenizer, SYSTEM, **opts)


# --- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, n",
    [([], [1], 0), ([1, 2, 3], [1, 2, 3, 4], 3), ([1, 2, 3], [1, 9, 3], 1), ([5], [6], 0), ([1, 2], [1, 2], 2)],
)
def test_common_prefix(a, b, n):
    assert common_prefix(a, b) == n


@pytest.mark.parametrize(
    "config, setting, window",
    [({"max_position_embeddings": 8192}, 0, 8192), ({"max_position_embeddings": 8192}, 512, 512),
     ({}, 0, 4096), ({"text_config": {"max_position_embeddings": 1024}}, 0, 1024)],
)
def test_context_window(config, setting, window):
    assert context_window(config, setting) == window


# --- the session -------------------------------------------------------------------------------


def test_second_turn_prefills_only_the_new_part(loaded):
    s = session(loaded)
    first = s.reply("What is bread for?")
    turn1 = s.stats
    assert turn1.prefill_tokens == turn1.prompt_tokens > 0
    assert turn1.generated_tokens == 12 and turn1.finish_reason == "length"
    cached_after_turn1 = list(s._cached)
    assert s._cache_offset() == len(cached_after_turn1) == turn1.prompt_tokens + 12

    s.reply("And what about streets?")
    turn2 = s.stats
    full = s.encode([("What is bread for?", first)], "And what about streets?")
    assert turn2.prompt_tokens == len(full)
    # Everything the cache shares with the new rendering is reused; only the rest is prefilled.
    assert turn2.reused_tokens == common_prefix(cached_after_turn1, full) >= turn1.prompt_tokens
    assert turn2.prefill_tokens == len(full) - turn2.reused_tokens < len(full)
    assert s.total_prefill_tokens == turn1.prefill_tokens + turn2.prefill_tokens
    assert len(s.history) == 2


def test_cached_turn_gives_the_same_answer_as_a_fresh_prefill(loaded):
    s = session(loaded)
    first = s.reply("What is bread for?")
    cached = s.reply("And what about streets?")
    fresh = session(loaded)
    fresh.history = [("What is bread for?", first)]
    assert fresh.reply("And what about streets?") == cached
    assert fresh.stats.reused_tokens == 0


def test_a_template_that_rerenders_differently_falls_back(loaded):
    s = session(loaded)
    first = s.reply("Hello there")
    s.system_prompt = "A different system prompt changes the very first tokens."
    cached = s.reply("Second question")
    # Only the shared "<|im_start|>system\n..." head is kept; the rest is prefilled again.
    assert s.stats.reused_tokens < 10 and s.stats.prefill_tokens > s.stats.prompt_tokens - 10
    assert s._cache_offset() == len(s._cached)
    fresh = session(loaded)
    fresh.system_prompt = s.system_prompt
    fresh.history = [("Hello there", first)]
    assert fresh.reply("Second question") == cached


def test_reset_forgets_history_and_cache(loaded):
    s = session(loaded)
    s.reply("What is bread for?")
    s.reset()
    assert s.history == []
    s.reply("What is bread for?")
    assert s.stats.reused_tokens == 0 and s.stats.prefill_tokens == s.stats.prompt_tokens


def test_context_trimming_drops_oldest_turns_and_says_so_once(loaded):
    s = session(loaded, window=160, max_tokens=16)
    notices, full_reuse_after_trim = [], 0
    for i in range(8):
        before = (s.trimmed_turns, s.stats.prompt_tokens)
        s.reply(f"Question number {i} about bread, streets and repair?")
        notices += s.pop_notices()
        assert s.stats.prompt_tokens + s.max_tokens <= 160
        # Trimming leaves slack, so a following turn reuses the whole cached prompt again.
        if before[0] and s.trimmed_turns == before[0] and s.stats.reused_tokens >= before[1]:
            full_reuse_after_trim += 1
    assert full_reuse_after_trim >= 2
    assert s.trimmed_turns > 0
    assert len(notices) == 1 and "context window of 160 tokens" in notices[0]
    assert s.history[-1][0] == "Question number 7 about bread, streets and repair?"
    assert all("number 0 " not in q for q, _ in s.history)


def test_a_message_too_long_for_the_window_is_cut_to_what_fits_and_answered(loaded):
    s = session(loaded, window=160, max_tokens=16)
    s.reply("word " * 200)
    kept = s.history[-1][0]
    assert kept.startswith("word word") and len(kept) < 200 * 5 and not kept.endswith(" ")
    assert 100 < s.stats.prompt_tokens <= 160 - 16
    (notice,) = s.pop_notices()
    assert f"only its first {len(kept)} of 1000 characters were used" in notice


def test_a_system_prompt_too_long_for_the_window_is_a_clear_error(loaded):
    s = ChatSession(loaded.model, loaded.tokenizer, SYSTEM * 20, temperature=0.0, max_tokens=16, window=64)
    with pytest.raises(PartnerError, match="system prompt alone is more than the 48 tokens"):
        s.reply("Hello?")


def test_max_tokens_must_leave_room(loaded):
    with pytest.raises(PartnerError, match="smaller than the context window"):
        session(loaded, window=64, max_tokens=64)


def test_stopping_a_reply_keeps_the_partial_answer_and_a_consistent_cache(loaded):
    s = session(loaded, max_tokens=40)
    stream = s.ask("What is bread for?")
    got = [next(stream) for _ in range(3)]
    stream.close()  # what the REPL does on Ctrl-C
    assert s.stats.finish_reason == "interrupted"
    assert s.history[-1] == ("What is bread for?", "".join(got).strip())
    assert s._cache_offset() == len(s._cached)
    s.reply("Go on.")
    assert s.stats.reused_tokens > 0 and s._cache_offset() == len(s._cached)


def test_temperature_sampling_is_seeded(loaded):
    a = session(loaded, temperature=1.0, top_p=1.0, seed=3).reply("Hi")
    b = session(loaded, temperature=1.0, top_p=1.0, seed=3).reply("Hi")
    assert a == b


def test_commands(loaded, tmp_path):
    s = session(loaded)
    s.reply("What is bread for?")
    out: list[str] = []
    assert handle_command(s, "tiny", "/temp 0.3", out.append) and s.temperature == 0.3
    assert handle_command(s, "tiny", "/temp -1", out.append) and "Usage: /temp" in out[-1]
    assert handle_command(s, "tiny", "/system", out.append) and out[-1] == SYSTEM
    assert handle_command(s, "tiny", f"/save {tmp_path / 'c.md'}", out.append)
    assert "Saved 1 turn" in out[-1]
    assert handle_command(s, "tiny", "/bogus", out.append) and "Unknown command /bogus" in out[-1]
    assert handle_command(s, "tiny", "/help", out.append) and "/reset" in out[-1]
    assert handle_command(s, "tiny", "/reset", out.append) and s.history == []
    assert handle_command(s, "tiny", "/quit", out.append) is False


def test_transcript_markdown(loaded):
    s = session(loaded)
    s.history = [("Q one?", "A one."), ("Q two?", "A two.")]
    text = transcript_markdown(s, "run r1 (fused model)")
    assert text.startswith("# Chat with run r1 (fused model)")
    assert SYSTEM in text
    assert text.index("Q one?") < text.index("A one.") < text.index("Q two?") < text.index("A two.")


def test_transcript_keeps_the_passages_shown_under_each_answer(loaded):
    from mlx_partner.chat.citations import NOT_GROUNDED, Citation, Cited

    s = session(loaded)
    s.history = [("Q one?", "A one.")]
    s.annotate(Citation((Cited("streets/bench.md", "The Bench", "A bench is an argument.", 0.91, 7),),
                        grounded=True, unverified=('"four words never written"',)))
    s.history.append(("Q two?", "A two."))
    s.annotate(Citation(grounded=False))
    s.history.append(("Q three?", "A three."))  # citations were off: nothing under it
    text = transcript_markdown(s, "run r1")
    one, two, three = text.split("## You")[1:]
    assert '> From your writing:\n>\n> 1. `streets/bench.md:7` The Bench (closeness 0.91)\n' in one
    assert '>    "A bench is an argument."' in one and "Quoted, but not found in your writing" in one
    assert one.index("A one.") < one.index("> From your writing:")
    assert f"> _{NOT_GROUNDED}_" in two and "From your writing" not in two
    assert ">" not in three
    # Old turns dropped to fit the window take their passages with them; the rest keep their own.
    s.history.pop(0)
    s.shown.pop(s.trimmed_turns, None)
    s.trimmed_turns += 1
    assert [(q, c is not None) for q, _a, c in s.turns()] == [("Q two?", True), ("Q three?", False)]
    s.reset()
    assert s.shown == {} and s.turns() == []


def test_trimming_moves_no_passage_to_another_turn(loaded):
    from mlx_partner.chat.citations import Citation

    s = session(loaded, window=160, max_tokens=8)
    for i in range(8):
        s.reply(f"Question {i} about bread, streets and the long habits of repair?")
        s.annotate(Citation(grounded=True, coverage=float(i)))
    assert s.trimmed_turns > 0
    assert [c.coverage for _q, _a, c in s.turns()] == [float(int(q.split()[1])) for q, _a, _c in s.turns()]
    assert len(s.shown) == len(s.history)


# --- what chat talks to ------------------------------------------------------------------------


def test_no_run_yet_is_a_clean_message(tmp_path):
    ws = Workspace.at(tmp_path)
    with pytest.raises(ModelError, match="mlx-partner train"):
        resolve_target(ws)
    result = CliRunner().invoke(cli, ["-w", str(tmp_path), "chat", "--prompt", "hi"])
    assert result.exit_code == 1
    assert "There is no trained partner" in result.output and "mlx-partner train" in result.output
    assert "Traceback" not in result.output


def test_model_and_run_flags_conflict(tmp_path):
    result = CliRunner().invoke(cli, ["-w", str(tmp_path), "chat", "--model", "x", "--base"])
    assert result.exit_code == 2 and "--model cannot be combined" in result.output


# --- the CLI on a model folder -----------------------------------------------------------------


@pytest.fixture
def model_dir(tiny_model, tmp_path) -> Path:
    """A copy of the tiny model carrying its system prompt, as a fused model folder does."""
    path = tmp_path / "model"
    shutil.copytree(tiny_model, path)
    (path / "system_prompt.txt").write_text(SYSTEM, encoding="utf-8")
    return path


def invoke(ws: Path, *args: str, input: str | None = None):
    return CliRunner().invoke(cli, ["-w", str(ws), "chat", *args], input=input)


def test_prompt_mode_prints_only_the_answer(model_dir, tmp_path, loaded):
    result = CliRunner().invoke(
        cli, ["-w", str(tmp_path), "chat", "--model", str(model_dir), "--prompt", "What is bread for?",
              "--temp", "0", "--max-tokens", "10"],
    )
    assert result.exit_code == 0, result.stderr
    expected = session(loaded, max_tokens=10).reply("What is bread for?")
    assert result.stdout == expected + "\n" or result.stdout.strip() == expected.strip()
    assert "Loading model" in result.stderr


def test_repl_multi_turn_commands_and_save(model_dir, tmp_path):
    transcript = tmp_path / "out" / "chat.md"
    lines = [
        "What is bread for?",
        "/temp 0",
        "And streets?",
        "/system",
        "/nonsense",
        f"/save {transcript}",
        "/reset",
        "After the reset?",
        "/quit",
        "never read",
    ]
    result = invoke(tmp_path, "--model", str(model_dir), "--max-tokens", "8", input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count(">>> ") >= 9
    assert "(Temperature 0, greedy.)" in out
    assert SYSTEM in out
    assert "Unknown command /nonsense; /help lists them." in out
    assert "(Saved 2 turn(s) to" in out
    assert "(Conversation cleared.)" in out
    assert "never read" not in out
    saved = transcript.read_text()
    assert "## You\n\nWhat is bread for?" in saved and "## You\n\nAnd streets?" in saved
    assert "After the reset?" not in saved
    assert "\x1b[" not in out  # no ANSI codes when not a terminal


def test_repl_ends_cleanly_at_end_of_input(model_dir, tmp_path):
    result = invoke(tmp_path, "--model", str(model_dir), "--max-tokens", "4", input="Hello\n")
    assert result.exit_code == 0, result.output
    assert "/help for commands" in result.output


def test_ctrl_c_stops_a_reply_but_not_the_repl(model_dir, tmp_path, monkeypatch):
    import mlx_partner.chat.session as chat

    real_ask = chat.ChatSession.ask
    calls = {"n": 0}

    def ask(self, question, passages=()):
        calls["n"] += 1
        stream = real_ask(self, question, passages)
        if calls["n"] == 1:  # the first reply is interrupted after one piece
            yield next(stream)
            raise KeyboardInterrupt
        yield from stream

    monkeypatch.setattr(chat.ChatSession, "ask", ask)
    result = invoke(tmp_path, "--model", str(model_dir), "--max-tokens", "6",
                    input=f"First?\nSecond?\n/save {tmp_path / 't.md'}\n/quit\n")
    assert result.exit_code == 0, result.output
    assert "[stopped]" in result.output
    assert calls["n"] == 2
    assert "(Saved 2 turn(s)" in result.output


def test_chat_target_for_a_model_without_its_own_prompt_uses_the_workspace_prompt(tiny_model, tmp_path):
    ws = Workspace.at(tmp_path)
    ws.system_prompt_path.parent.mkdir(parents=True)
    ws.system_prompt_path.write_text(SYSTEM, encoding="utf-8")
    target = resolve_target(ws, model=str(tiny_model))
    assert target == ChatTarget(str(tiny_model), None, SYSTEM, f"model {tiny_model}")


@pytest.mark.parametrize("template", ["llama3", "gemma"])
def test_cache_reuse_across_templates(template, tmp_path):
    """Llama-3 (BOS and a date block in the template) and Gemma (system folded into the first user turn)."""
    from tiny_model import build_tiny_model

    from mlx_partner.models import load_model

    lm = load_model(build_tiny_model(tmp_path / template, template=template))
    s = ChatSession(lm.model, lm.tokenizer, SYSTEM, temperature=0.0, max_tokens=8, window=2048)
    first = s.reply("What is bread for?")
    assert s.stats.prompt_tokens == s.stats.prefill_tokens
    turn1 = s.stats.prompt_tokens
    cached = s.reply("And streets?")
    assert s.stats.reused_tokens >= turn1 and s.stats.prefill_tokens < s.stats.prompt_tokens
    rendered = lm.tokenizer.decode(s.encode([], "x"))
    assert rendered.count(SYSTEM) == 1
    fresh = ChatSession(lm.model, lm.tokenizer, SYSTEM, temperature=0.0, max_tokens=8, window=2048)
    fresh.history = [("What is bread for?", first)]
    assert fresh.reply("And streets?") == cached


# --- chat on a trained run ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_ws(tiny_model, tmp_path_factory) -> Path:
    """A workspace with one short run on the tiny model, built by the real dataset and train stages."""
    from mlx_partner.config import Settings
    from mlx_partner.dataset.write import run_dataset
    from mlx_partner.train.run import run_train

    repo = Path(__file__).resolve().parent.parent
    root = tmp_path_factory.mktemp("trained-ws")
    shutil.copy(repo / "profile.md", root / "profile.md")
    ws = Workspace.at(root)
    settings = Settings().override("train", base_model=str(tiny_model), iters=1, batch_size=2, val_batches=1,
                                   steps_per_eval=1)
    run_dataset(ws, settings, extra_pairs=[repo / "examples" / "pairs.jsonl"], base_model=str(tiny_model))
    result = run_train(ws, settings, run_name="r1", progress=False)
    assert result.status == "finished"
    return root


def test_default_target_is_the_latest_run_with_its_training_prompt(trained_ws, tiny_model):
    ws = Workspace.at(trained_ws)
    target = resolve_target(ws)
    run_dir = ws.adapters_dir / "r1"
    assert target.run_name == "r1" and target.adapter_path == run_dir.resolve()
    assert Path(target.model) == tiny_model.resolve()
    assert target.system_prompt == (run_dir / "system_prompt.txt").read_text() == ws.system_prompt_path.read_text()
    assert target.label == "run r1 (base + adapters)"
    base = resolve_target(ws, base=True)
    assert base.adapter_path is None and base.system_prompt == target.system_prompt
    assert base.label.startswith("base model ")


def test_prompt_mode_answers_from_the_run(trained_ws, tiny_model):
    from mlx_partner.models import load_model

    args = ["-w", str(trained_ws), "chat", "--prompt", "What is bread for?", "--temp", "0", "--max-tokens", "10"]
    tuned = CliRunner().invoke(cli, args)
    base = CliRunner().invoke(cli, [*args, "--base"])
    assert tuned.exit_code == 0 and base.exit_code == 0, tuned.output + base.output
    assert "Loading run r1 (base + adapters)" in tuned.stderr
    run_dir = Path(trained_ws) / "adapters" / "r1"
    lm = load_model(tiny_model, adapter_path=run_dir)
    s = ChatSession(lm.model, lm.tokenizer, (run_dir / "system_prompt.txt").read_text(), temperature=0.0,
                    max_tokens=10, window=2048)
    assert tuned.stdout == s.reply("What is bread for?") + "\n"


def test_unknown_run_names_the_runs_there(trained_ws):
    result = CliRunner().invoke(cli, ["-w", str(trained_ws), "chat", "--run", "nope", "--prompt", "hi"])
    assert result.exit_code == 1
    assert "No run named 'nope'" in result.output and "r1" in result.output


def test_a_fused_model_is_preferred(trained_ws, tiny_model, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(trained_ws, root, symlinks=True)
    fused = root / "models" / "r1"
    shutil.copytree(tiny_model, fused)
    (fused / "system_prompt.txt").write_text("The fused model's copy of the prompt.")
    (fused / "config.json").touch()  # fused after training, as `fuse` does
    target = resolve_target(Workspace.at(root))
    assert target == ChatTarget(str(fused), None, "The fused model's copy of the prompt.", "run r1 (fused model)", "r1")


def test_before_any_dataset_a_model_gets_the_prompt_dataset_would_derive(tiny_model, tmp_path):
    from mlx_partner.config import Settings
    from mlx_partner.dataset.system_prompt import resolve_system_prompt

    repo = Path(__file__).resolve().parent.parent
    shutil.copy(repo / "profile.md", tmp_path / "profile.md")
    ws = Workspace.at(tmp_path)
    target = resolve_target(ws, model=str(tiny_model))
    assert target.system_prompt == resolve_system_prompt(ws, Settings())[0]
    assert "Oona" in target.system_prompt
    configured = Settings().override("dataset", system_prompt="Be brief.")
    assert resolve_target(ws, model=str(tiny_model), settings=configured).system_prompt == "Be brief."


def test_repetition_penalty_changes_greedy_output_and_keeps_the_cache_consistent(loaded):
    plain = session(loaded, max_tokens=30).reply("What is bread for?")
    s = session(loaded, max_tokens=30, repetition_penalty=1.5)
    penalised = s.reply("What is bread for?")
    assert penalised != plain
    s.reply("And streets?")
    assert s.stats.reused_tokens > 0 and s._cache_offset() == len(s._cached)


def test_repetition_penalty_flag_and_setting(model_dir, tmp_path):
    args = ["-w", str(tmp_path), "chat", "--model", str(model_dir), "--prompt", "What is bread for?",
            "--temp", "0", "--max-tokens", "30"]
    plain = CliRunner().invoke(cli, args)
    flag = CliRunner().invoke(cli, [*args, "--repetition-penalty", "1.5"])
    (tmp_path / "partner.toml").write_text("[chat]\nrepetition_penalty = 1.5\n")
    setting = CliRunner().invoke(cli, args)
    assert plain.exit_code == flag.exit_code == setting.exit_code == 0
    assert flag.stdout == setting.stdout != plain.stdout
    bad = CliRunner().invoke(cli, [*args, "--repetition-penalty", "0.5"])
    assert bad.exit_code == 2


def test_a_fused_model_older_than_the_adapters_is_not_used(trained_ws, tiny_model, tmp_path):
    import os

    root = tmp_path / "ws"
    shutil.copytree(trained_ws, root, symlinks=True)
    fused = root / "models" / "r1"
    shutil.copytree(tiny_model, fused)
    old = (root / "adapters" / "r1" / "adapters.safetensors").stat().st_mtime - 100
    os.utime(fused / "config.json", (old, old))
    target = resolve_target(Workspace.at(root))
    assert target.adapter_path is not None and "older than the run's adapters" in target.note
    result = CliRunner().invoke(cli, ["-w", str(root), "chat", "--prompt", "Hi", "--max-tokens", "3"])
    assert result.exit_code == 0 and "mlx-partner fuse --run r1" in result.stderr
