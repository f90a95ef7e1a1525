"""`mlx-partner serve`: the partner as an OpenAI-compatible server on 127.0.0.1, for other apps.

    plan = plan_serve(ws, run_name=None, host=None, port=None, settings=settings)
    run_serve(plan)                                  # blocks until Ctrl-C

It is mlx-lm's own server (`mlx_lm.server`: /v1/chat/completions, streamed or not, /v1/models,
/health) on the fused model of the latest run (or `--run`). Nothing is fused here: a run without
a fused model, or with one older than its adapters or fused before the partner's system prompt
went into the chat template, is refused with the `mlx-partner fuse` command that fixes it (a fuse
takes minutes and its own checks; a server should start in seconds and change nothing).

The fused model's chat template starts every conversation that has no system message with the
run's system prompt, so a client that sends none talks to the partner; a client's own system
message still wins. Whatever model name a client asks for, it gets the partner (mlx-lm would
otherwise try to download that name from the hub), and /v1/models lists just the partner.
Sampling defaults come from [chat]; a request may set its own. There is no authentication: it
listens on loopback unless --host says otherwise, and web pages may not read its replies (CORS)
unless [serve] allowed_origins names them.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import ModelError, PartnerError, TrainingError
from .models import SIDECAR
from .runs import ADAPTER_WEIGHTS, find_run
from .workspace import Workspace


class ServeError(PartnerError):
    """The server cannot start (a port in use, a host that needs saying explicitly)."""


@dataclass(frozen=True)
class ServePlan:
    """What `serve` will run, resolved and checked before any model is loaded."""

    run: str
    model_dir: Path
    host: str
    port: int
    temperature: float
    top_p: float
    max_tokens: int
    allowed_origins: str = ""  # browser origins allowed to read replies (CORS); "" none, "*" any

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def curl_line(self) -> str:
        body = json.dumps({"model": self.run, "messages": [{"role": "user", "content": "What do you care about most?"}]})
        return f"curl {self.base_url}/chat/completions -H 'Content-Type: application/json' -d '{body}'"

    def argv(self) -> list[str]:
        """mlx_lm.server's command line for this plan."""
        return ["mlx_lm.server", "--model", str(self.model_dir), "--host", self.host, "--port", str(self.port),
                "--temp", f"{self.temperature:g}", "--top-p", f"{self.top_p:g}", "--max-tokens", str(self.max_tokens),
                # as `chat` renders prompts: models with think blocks (Qwen3) answer without one
                "--chat-template-args", json.dumps({"enable_thinking": False}),
                # mlx-lm allows every web page ("*"); with no authentication, a page the user visits
                # could read the partner's answers, so only the origins in [serve] are allowed.
                "--allowed-origins", self.allowed_origins]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fused_model(ws: Workspace, run_name: str | None) -> tuple[str, Path]:
    """The run's fused folder, refused (with the command that fixes it) unless it is current."""
    try:
        run_dir = find_run(ws, run_name)
    except TrainingError:
        if run_name is not None:
            raise
        raise ModelError(f"There is no trained partner in {ws.root} yet; run `mlx-partner train` and "
                         f"`mlx-partner fuse` first (or `mlx-partner demo` to try the built-in example).") from None
    run = run_dir.name
    fused = ws.models_dir / run
    fix = f"`mlx-partner fuse --run {run}`"
    if not (fused / "config.json").exists():
        raise ModelError(f"Run {run} has no fused model in {fused} yet; make one with {fix}, then serve again.")
    try:
        stale = (run_dir / ADAPTER_WEIGHTS).stat().st_mtime > (fused / "config.json").stat().st_mtime + 1
    except OSError:
        stale = False
    if stale:
        raise ModelError(f"models/{run}/ is older than the run's adapters; refresh it with {fix}, then serve again.")
    try:
        record = json.loads((fused / SIDECAR).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        record = {}
    if "default_system_prompt" not in record:  # False: the run has no system prompt to default to
        raise ModelError(f"models/{run}/ was fused before its chat template carried the partner's system prompt, so "
                         f"apps that send none would not get it; fuse it again with {fix}, then serve again.")
    return run, fused


def check_port(host: str, port: int) -> None:
    """ServeError in one line when nothing can listen on host:port (in use, or not an address here)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"Cannot listen on {host}: {exc.strerror}.") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(f"Port {port} is in use on {host}; stop what listens there or choose another with --port.") from None
            raise ServeError(f"Cannot listen on {host}:{port} ({exc.strerror}).") from None


def plan_serve(ws: Workspace, run_name: str | None, host: str | None, port: int | None,
               settings: Settings) -> ServePlan:
    """Resolve what to serve and where; refuse, before loading anything, what cannot be served.

    `host` and `port` are the flags (None: not given, [serve] settings apply). A host that is not
    loopback is served only when given explicitly as a flag, not from partner.toml or the
    environment, because there is no authentication.
    """
    if host is None and not is_loopback(settings.serve.host):
        raise ServeError(f"[serve] host is {settings.serve.host}, which is not loopback; the server has no "
                         f"authentication, so a public address must be given explicitly: --host {settings.serve.host}.")
    host = host or settings.serve.host
    port = settings.serve.port if port is None else port
    run, fused = _fused_model(ws, run_name)
    check_port(host, port)
    chat = settings.chat
    return ServePlan(run, fused, host, port, chat.temperature, chat.top_p, chat.max_tokens,
                     settings.serve.allowed_origins)


@contextlib.contextmanager
def _swapped(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def server_args(argv: list[str]) -> Any:
    """mlx_lm.server's parsed options (its parser lives inside its main()): run main() with the
    command line and `run` swapped for a function that keeps the options and returns."""
    from mlx_lm import server

    captured: dict[str, Any] = {}

    def keep(host: str, port: int, provider: Any, *args: Any, **kwargs: Any) -> None:
        captured["args"] = provider.cli_args

    with _swapped(sys, "argv", argv), _swapped(server, "run", keep):
        server.main()  # parses, sets up logging and the wired-memory limit, then calls keep()
    return captured["args"]


def partner_provider() -> type:
    """mlx-lm's ModelProvider, answering every model name (and adapter) with the fused partner."""
    from mlx_lm import server

    class PartnerProvider(server.ModelProvider):
        def load(self, model_path: Any, adapter_path: Any = None, draft_model_path: Any = None) -> Any:
            return super().load("default_model", None, "default_model")

    return PartnerProvider


def partner_handler(run: str) -> type:
    """mlx-lm's request handler, with /v1/models listing the one model it serves: the partner.
    (mlx-lm's own lists the Hugging Face cache, and sends an empty body where there is none.)"""
    from mlx_lm import server

    class PartnerHandler(server.APIHandler):
        def handle_models_request(self) -> None:
            self._set_completion_headers(200)
            self.end_headers()
            model = {"id": run, "object": "model", "created": self.created, "owned_by": "mlx-partner"}
            self.wfile.write(json.dumps({"object": "list", "data": [model]}).encode())
            self.wfile.flush()

    return PartnerHandler


def run_serve(plan: ServePlan) -> None:
    """Serve until interrupted (Ctrl-C): mlx-lm's server on the plan's fused model.

    What `mlx_lm.server.run` does, with our handler: its `run` accepts a handler class but does
    not pass it on (mlx-lm 0.32), so its HTTP loop is called directly. Holding the response
    generator also lets a failed bind stop its (non-daemon) thread instead of hanging.
    """
    from mlx_lm import server
    from mlx_lm.models.cache import LRUPromptCache

    args = server_args(plan.argv())
    generator = server.ResponseGenerator(partner_provider()(args), LRUPromptCache(args.prompt_cache_size))
    try:
        server._run_http_server(plan.host, plan.port, generator, handler_class=partner_handler(plan.run))
    except OSError as exc:
        generator.stop_and_join()
        if exc.errno == errno.EADDRINUSE:  # taken between the check and the bind
            raise ServeError(f"Port {plan.port} is in use on {plan.host}; choose another with --port.") from None
        raise
