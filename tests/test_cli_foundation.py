"""The CLI's foundation through CliRunner: init, --version, the workspace option, settings errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_partner import __version__
from mlx_partner.cli import cli
from mlx_partner.config import SECTIONS, Settings, default_config_text, tomllib
from mlx_partner.init import GITIGNORE
from mlx_partner.templates import PROFILE_TEMPLATE

DOC = "# On Bread\n\nA loaf teaches patience, one bake at a time.\n"


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def workspace_with_a_document(root: Path) -> Path:
    (root / "sources").mkdir(parents=True, exist_ok=True)
    (root / "sources" / "bread.md").write_text(DOC, encoding="utf-8")
    return root


# --- init --------------------------------------------------------------------------------------


def test_init_creates_a_workspace(tmp_path):
    target = tmp_path / "my-partner"
    result = invoke("init", str(target))
    assert result.exit_code == 0, result.output
    assert (target / "sources").is_dir()
    assert (target / "profile.md").read_text() == PROFILE_TEMPLATE
    assert (target / ".gitignore").read_text() == GITIGNORE
    for ignored in ("data/", "adapters/", "models/"):
        assert ignored in GITIGNORE.splitlines()
    for section in ("## Voice", "## Style", "## Convictions", "## Purpose of the partner", "## What to avoid"):
        assert section in PROFILE_TEMPLATE
    assert result.output.count("created  ") == 4 and "kept" not in result.output
    assert "mlx-partner sources" in result.output


def test_init_config_lists_every_setting_commented_at_its_default(tmp_path):
    invoke("init", str(tmp_path))
    text = (tmp_path / "partner.toml").read_text()
    assert text == default_config_text()
    assert tomllib.loads(text) == {name: {} for name in SECTIONS}  # everything commented out
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    assert Settings().as_dict() == {
        section: {**Settings().as_dict()[section], **values} for section, values in tomllib.loads(uncommented).items()
    }
    for section, values in Settings().as_dict().items():
        assert f"[{section}]" in text
        for key in values:
            assert re.search(rf"^# {key} = ", text, re.M), key


def test_init_never_overwrites_and_says_what_it_kept(tmp_path):
    (tmp_path / "sources").mkdir()
    (tmp_path / "profile.md").write_text("my own profile")
    (tmp_path / "partner.toml").write_text("[train]\nepochs = 5\n")
    result = invoke("init", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "profile.md").read_text() == "my own profile"
    assert (tmp_path / "partner.toml").read_text() == "[train]\nepochs = 5\n"
    for name in ("sources", "profile.md", "partner.toml"):
        assert re.search(rf"^kept\s+\S*{re.escape(name)} \(exists, left alone\)$", result.output, re.M), name
    assert re.search(r"^created\s+\S*\.gitignore$", result.output, re.M)
    again = invoke("init", str(tmp_path))
    assert again.exit_code == 0 and "created" not in again.output and again.output.count("kept     ") == 4


def test_init_uses_the_workspace_option_without_a_directory(tmp_path):
    result = invoke("-w", str(tmp_path / "ws"), "init")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ws" / "profile.md").exists()


def test_init_into_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = invoke("init", str(tmp_path / "afile"))
    assert result.exit_code == 2 and "Traceback" not in result.output


# --- version, help, workspace ------------------------------------------------------------------


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"mlx-partner, version {__version__}"


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["init", "--help"], ["sources", "--help"]])
def test_help_has_an_example(args):
    result = invoke(*args)
    assert result.exit_code == 0
    assert "mlx-partner " in result.output and ("Example" in result.output or "mlx-partner init" in result.output)


def test_workspace_from_option_and_environment(tmp_path):
    a = workspace_with_a_document(tmp_path / "a")
    b = workspace_with_a_document(tmp_path / "b")
    (b / "sources" / "second.md").write_text("Another document, about kettles.\n")
    by_option = json.loads(invoke("-w", str(a), "sources", "--json").output)
    by_env = json.loads(invoke("sources", "--json", env={"MLX_PARTNER_WORKSPACE": str(b)}).output)
    assert [d["id"] for d in by_option["documents"]] == ["bread.md"]
    assert [d["id"] for d in by_env["documents"]] == ["bread.md", "second.md"]
    # The option wins over the environment.
    both = json.loads(invoke("-w", str(a), "sources", "--json", env={"MLX_PARTNER_WORKSPACE": str(b)}).output)
    assert [d["id"] for d in both["documents"]] == ["bread.md"]


def test_default_workspace_is_the_current_folder(tmp_path, monkeypatch):
    workspace_with_a_document(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = invoke("sources", "--json")
    assert result.exit_code == 0, result.output
    assert [d["id"] for d in json.loads(result.output)["documents"]] == ["bread.md"]


def test_unknown_command_and_option_are_usage_errors(tmp_path):
    for args in (["frobnicate"], ["sources", "--no-such-flag"], ["-w"]):
        result = invoke(*args)
        assert result.exit_code == 2, args
        assert "Traceback" not in result.output


# --- settings errors ---------------------------------------------------------------------------


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_unknown_setting_names_the_key_the_file_and_the_valid_keys(tmp_path):
    workspace_with_a_document(tmp_path)
    (tmp_path / "partner.toml").write_text("[sources]\ntoken_budgte = 9000\n")
    line = one_line_error(invoke("-w", str(tmp_path), "sources"))
    assert "token_budgte" in line
    assert str(tmp_path / "partner.toml") in line
    for key in ("token_budget", "themes", "seed"):
        assert key in line


def test_unknown_section_is_named(tmp_path):
    workspace_with_a_document(tmp_path)
    (tmp_path / "partner.toml").write_text("[trian]\nepochs = 2\n")
    line = one_line_error(invoke("-w", str(tmp_path), "sources"))
    assert "[trian]" in line and "train" in line and "partner.toml" in line


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('[sources]\ntoken_budget = "lots"\n', ["sources.token_budget", "int", "'lots'"]),
        ("[sources]\nseed = 1.5\n", ["sources.seed", "int"]),
        ("[sources]\nthemes = true\n", ["sources.themes", "int"]),
        ("[train]\ngrad_checkpoint = 1\n", ["train.grad_checkpoint", "bool"]),
        ("sources = 3\n", ["[sources] table"]),
    ],
)
def test_wrong_type_is_named(tmp_path, toml, words):
    workspace_with_a_document(tmp_path)
    (tmp_path / "partner.toml").write_text(toml)
    line = one_line_error(invoke("-w", str(tmp_path), "sources"))
    for word in words:
        assert word in line


def test_malformed_toml(tmp_path):
    workspace_with_a_document(tmp_path)
    (tmp_path / "partner.toml").write_text("[sources\ntoken_budget = = 3\n")
    line = one_line_error(invoke("-w", str(tmp_path), "sources"))
    assert "not valid TOML" in line and "partner.toml" in line


def test_settings_precedence_defaults_file_environment_flags(tmp_path):
    workspace_with_a_document(tmp_path)

    def budget(*args: str, env: dict[str, str] | None = None) -> int:
        result = invoke("-w", str(tmp_path), "sources", "--json", *args, env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["token_budget"]

    assert budget() == 12000
    (tmp_path / "partner.toml").write_text("[sources]\ntoken_budget = 9000\n")
    assert budget() == 9000
    assert budget(env={"MLX_PARTNER_SOURCES_TOKEN_BUDGET": "7000"}) == 7000
    assert budget("--token-budget", "5000", env={"MLX_PARTNER_SOURCES_TOKEN_BUDGET": "7000"}) == 5000


def test_bad_environment_value_is_named(tmp_path):
    workspace_with_a_document(tmp_path)
    env = {"MLX_PARTNER_SOURCES_TOKEN_BUDGET": "many"}
    line = one_line_error(invoke("-w", str(tmp_path), "sources", env=env))
    assert "sources.token_budget" in line and "the environment" in line
    line = one_line_error(invoke("-w", str(tmp_path), "sources", env={"MLX_PARTNER_SOURCES_COLOUR": "red"}))
    assert "colour" in line and "token_budget" in line


def test_debug_variable_reraises_with_the_traceback(tmp_path):
    workspace_with_a_document(tmp_path)
    (tmp_path / "partner.toml").write_text("[sources]\nnope = 1\n")
    result = invoke("-w", str(tmp_path), "sources", env={"MLX_PARTNER_DEBUG": "1"})
    assert result.exit_code == 1
    assert result.exception is not None and type(result.exception).__name__ == "ConfigError"
