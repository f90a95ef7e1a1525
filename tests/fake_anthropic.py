"""A local stand-in for the Anthropic Messages API, for tests and the generate benchmark.

    server = FakeAnthropic(); server.start()        # http://127.0.0.1:<free port>
    server.configure(invented=0.3, latency=0.2)     # faults, at seeded rates
    server.fail(529, route="batch-retrieve", nth=2) # a fault on one chosen request (any attempt)
    ... ANTHROPIC_BASE_URL=server.url ...
    server.produced                                 # every pair it sent, tagged genuine or injected
    server.stop()

It is a real HTTP server (ThreadingHTTPServer in a thread) speaking enough of the API for the
real `anthropic` SDK: POST /v1/messages (forced tool use or JSON in text), and the Message
Batches endpoints (create, retrieve, results as JSONL). Replies are built from the documents in
the request: each pair quotes a real sentence of a document, and its first-person answer reuses
that sentence's words. Everything is deterministic: a reply depends only on the request body and
the seed, so a re-sent request gets the same reply.

It is as strict as the real API about what it is sent (`invalid_request`): a request it would
refuse gets the real 400 (`{"type": "error", "error": {"type": "invalid_request_error",
"message": "max_tokens: Field required"}, "request_id": ...}`): `model` missing or empty;
`max_tokens` missing, not a positive integer, or over the model's output limit (MAX_OUTPUT);
no messages, a first message not from the user, roles that do not alternate (the API has long
refused these; today's merges consecutive turns, which no request of ours relies on); empty or
whitespace-only text blocks, in messages and system; unknown top-level fields; a `tool_choice`
naming a tool not in `tools` (or any tool_choice without tools); more than 4 `cache_control`
blocks across tools, system and messages. A message batch is refused (400) for a `custom_id`
not matching ^[a-zA-Z0-9_-]{1,64}$ or used twice; its requests' params are checked as the API
does, asynchronously: an invalid one comes back as an `errored` result.

Faults. Rates (`rate_429`, `rate_500`, `rate_529`) fault a Messages request's first attempt, so
the SDK's retry then succeeds. Rules (`fail`) fault any request on any route: the Nth request of
a route, every request whose body contains some text, only the Nth attempt of the same request,
at most `times` times; with 429, 500, 529 (overloaded) or "drop" (the connection closed with no
answer). Batch items come back `errored`, `expired` or `canceled` at the rates `batch_errored`,
`batch_expired`, `batch_canceled`; `forget_batches()` makes every batch sent so far unknown (404),
as a batch past its retention (or of another workspace) is.

Boundary rounds ("Pairs to write: 2 (boundary: 2)") get near-domain questions no document
answers, declined with a pointer quote; the probe request (tool record_probes, or "Probe
questions to write: N") gets probe questions. Both are written by fake_boundary.py, which also
makes them bad on request (boundary_answered, boundary_position, boundary_invented, boundary_none,
probe_answered, probe_none). The faults for pairs of the other kinds (invented, wrong_source,
duplicate, quote_noise) leave boundary pairs alone, so each fault is one the test asked for.

`configure(local=True)` makes it behave like llama-server: GET /props gives n_ctx, usage has no
cache fields, the Message Batches endpoints are 404 and a request over the window is a 400, and
it checks no more than llama-server does; `no_tools` (tools refused, 400) or `loose_tools`
(malformed tool input) on top.

Tokens are counted by a rule of its own (`count_tokens`), not the dry-run estimator's (4
characters a token): text is cut the way byte-level BPE tokenizers pre-tokenize it (words with
their leading space, numbers, runs of punctuation, whitespace), a word is a token per 7 letters
started, digits 3 a token, punctuation 2. On the example workspace's requests it is within 5% of
a real 49k-vocabulary byte-level BPE (SmolLM2's; measured: 305 vs 297 tokens for the tool
schema, 1351 vs 1295 for the instructions, 4740 vs 4522 for the documents, 39 vs 48 for a
round's text), so it stands for a real tokenizer, not for Claude's, which is not public. Prompt
caching is simulated: with cache_control present, the prefix up to the last marked block is
"written" the first time it is seen and "read" afterwards, from 1024 tokens on.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fake_boundary import boundary_pairs, probe_questions

TEST_API_KEY = "sk-ant-test-key-0123456789abcdef"  # the key the tests' environment gives the SDK
MIN_CACHEABLE = 1024
MAX_CACHE_BLOCKS = 4
CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
# The most output tokens a model may be asked for, by model-name prefix (first match wins); a
# name this table does not know gets DEFAULT_MAX_OUTPUT, the limit of the Sonnet 4.x models.
MAX_OUTPUT = (
    ("claude-3-haiku", 4096), ("claude-3-opus", 4096), ("claude-3-5-", 8192),
    ("claude-opus-4-0", 32000), ("claude-opus-4-1", 32000), ("claude-opus-4-2025", 32000),
)
DEFAULT_MAX_OUTPUT = 64000
# The top-level fields of a Messages request (the API refuses others: "Extra inputs are not permitted").
MESSAGE_FIELDS = {
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature",
    "top_k", "top_p", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers",
    "context_management", "output_format", "output_config",
}
ROUTES = ("messages", "batch-create", "batch-retrieve", "batch-results")
PIECE_RE = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+")
DOC_RE = re.compile(r'<document id="([^"]+)"[^>]*>\n(.*?)\n</document>', re.S)
ROUND_RE = re.compile(r"Round (\d+) of (\d+)")
COUNT_RE = re.compile(r"Pairs to write: (\d+) \(([^)]*)\)")
PROBES_RE = re.compile(r"Probe questions to write: (\d+)")
FAKE_WORDS = ["lanterns", "quietly", "negotiate", "with", "accountants", "whenever", "marble", "orchards", "forget", "their", "harbour", "velvet", "committees", "measure", "moonlight", "in", "teaspoons", "while", "copper", "violins", "elect", "a", "lighthouse"]
SWAPS = {
    "the": "a", "is": "was", "and": "but", "not": "never", "every": "each", "my": "our", "i": "we",
    "a": "the", "more": "less", "good": "fine", "people": "folks", "it": "this", "you": "one",
}


@dataclass
class Faults:
    """What to get wrong, and how often. Rates are per request (HTTP, reply) or per pair."""

    seed: int = 0
    latency: float = 0.0  # seconds before every reply
    rate_429: float = 0.0  # first attempt of a Messages request answered 429 (retry-after-ms: 10); see `fail` for others
    rate_500: float = 0.0
    rate_529: float = 0.0  # overloaded
    malformed: float = 0.0  # a reply whose tool input (or JSON text) has no usable pairs list
    truncated: float = 0.0  # a reply cut off at max_tokens
    invented: float = 0.0  # pair quotes a sentence that is not in the document (made up or paraphrased)
    wrong_source: float = 0.0  # pair cites a document id that is not in the batch
    duplicate: float = 0.0  # pair repeats an earlier question, lightly reworded
    quote_noise: float = 0.0  # genuine quotes with curly quotes, doubled spaces, case changes
    no_tools: bool = False  # reject requests with tools (400), like an endpoint without tool use
    text_only: bool = False  # ignore tools and answer with JSON in text
    api_key: str | None = None  # when set, other keys get 401
    batch_polls: int = 1  # retrieves answered in_progress before a message batch ends
    boundary_answered: float = 0.0  # boundary pair asks a question the documents answer
    boundary_position: float = 0.0  # boundary answer takes a position instead of declining
    boundary_invented: float = 0.0  # boundary answer's pointer quote is not in the documents
    boundary_none: bool = False  # boundary rounds answered with an empty pairs list
    probe_answered: float = 0.0  # probe question the documents answer
    probe_none: bool = False  # the probe request answered with an empty questions list
    # "local" mode, like llama-server: GET /props says n_ctx; no prompt cache (no cache fields in
    # usage); no Message Batches (404); a prompt + max_tokens over n_ctx is refused (400)
    local: bool = False
    n_ctx: int = 8192
    loose_tools: bool = False  # every tool call's input is malformed; JSON in text is fine
    # Message Batches: the share of a batch's items that come back errored (an api_error inside),
    # expired (not processed before the batch expired) or canceled (the batch was canceled)
    batch_errored: float = 0.0
    batch_expired: float = 0.0
    batch_canceled: float = 0.0
    max_output: int | None = None  # every model's output limit, instead of MAX_OUTPUT's


@dataclass
class Produced:
    """One pair the server sent in a well-formed reply."""

    question: str
    fault: str | None  # None = genuine
    docs: tuple[str, ...]  # the batch's documents
    quote: str = ""
    sources: tuple[str, ...] = ()
    answer: str = ""  # boundary pairs: a good and a bad one may share question, quote and sources

    @property
    def content(self) -> tuple[str, str, tuple[str, ...]]:
        """What identifies the pair in the client's output: question, quote, cited documents."""
        return self.question, self.quote, self.sources


@dataclass
class Rule:
    """A fault on chosen requests (`FakeAnthropic.fail`): every condition given must hold."""

    status: int | str  # 429, 500, 529 (overloaded), any HTTP status, or "drop": close, no answer
    route: str = "messages"  # "messages", "batch-create", "batch-retrieve", "batch-results" or "any"
    nth: int | None = None  # only the Nth request of the route (1-based, in arrival order, retries counted)
    attempt: int | None = None  # only this attempt of an identical request (1 = its first)
    contains: str | None = None  # only requests whose body (as JSON) holds this text
    times: int | None = None  # fire at most this often
    message: str = ""
    seen: int = 0  # requests of the route so far
    fired: int = 0

    def matches(self, route: str, attempt: int, body_text: str) -> bool:
        if self.route not in (route, "any"):
            return False
        self.seen += 1
        if self.times is not None and self.fired >= self.times:
            return False
        if self.nth is not None and self.seen != self.nth:
            return False
        if self.attempt is not None and attempt != self.attempt:
            return False
        return self.contains is None or self.contains in body_text


ERROR_KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


@dataclass
class _State:
    cache: set[str] = field(default_factory=set)
    attempts: dict[str, int] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    route_attempts: dict[str, int] = field(default_factory=dict)


def count_tokens(text: str) -> int:
    """Tokens as the server bills them: byte-level BPE pre-tokenization (words with their leading
    space, numbers, punctuation runs, whitespace), then a token per 7 letters of a word, 3 digits,
    2 punctuation marks or a whitespace run. Not the estimator's rule (see the module docstring)."""
    n = 0
    for piece in PIECE_RE.findall(text):
        core = piece.strip()
        if not core:
            n += 1
        elif core[0].isalpha() or core[0] == "'":
            n += math.ceil(len(core) / 7)
        elif core[0].isdigit():
            n += math.ceil(len(core) / 3)
        else:
            n += math.ceil(len(core) / 2)
    return n



def max_output(model: str) -> int:
    """The most output tokens `model` may be asked for (MAX_OUTPUT, by prefix)."""
    return next((n for prefix, n in MAX_OUTPUT if model.startswith(prefix)), DEFAULT_MAX_OUTPUT)


def _text_blocks_error(where: str, content: Any) -> str | None:
    for block in _blocks(content):
        if block.get("type") == "text":
            text = block.get("text")
            if not isinstance(text, str) or text == "":
                return f"{where}: text content blocks must be non-empty"
            if not text.strip():
                return f"{where}: text content blocks must contain non-whitespace text"
    return None


def _cache_marks(body: dict[str, Any]) -> list[Any]:
    marks = [t.get("cache_control") for t in body.get("tools") or [] if isinstance(t, dict)]
    if isinstance(body.get("system"), list):
        marks += [b.get("cache_control") for b in _blocks(body["system"])]
    for message in body.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            marks += [b.get("cache_control") for b in _blocks(message["content"])]
    return [m for m in marks if m is not None]


def invalid_request(body: dict[str, Any], output_limit: int | None = None) -> str | None:
    """The message the API's 400 (invalid_request_error) would give for this Messages request
    body, or None when the API would take it. `output_limit` overrides the model's (MAX_OUTPUT)."""
    extra = sorted(set(body) - MESSAGE_FIELDS)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    return (_model_error(body, output_limit) or _messages_error(body.get("messages")) or _system_error(body.get("system"))
            or _tools_error(body.get("tools"), body.get("tool_choice")) or _cache_error(body))


def _model_error(body: dict[str, Any], output_limit: int | None) -> str | None:
    model = body.get("model")
    if model is None:
        return "model: Field required"
    if not isinstance(model, str) or not model.strip():
        return "model: String should have at least 1 character"
    if "max_tokens" not in body:
        return "max_tokens: Field required"
    n = body["max_tokens"]
    if isinstance(n, bool) or not isinstance(n, int):
        return "max_tokens: Input should be a valid integer"
    if n < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    limit = output_limit or max_output(model)
    if n > limit:
        return f"max_tokens: {n} > {limit}, which is the maximum allowed number of output tokens for {model}"
    return None


def _messages_error(messages: Any) -> str | None:
    if messages is None:
        return "messages: Field required"
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if i == 0 and role != "user":
            return 'messages: first message must use the "user" role'
        if i and role == messages[i - 1]["role"]:
            return f'messages: roles must alternate between "user" and "assistant", but found multiple "{role}" roles in a row'
        content = message.get("content")
        if content in ("", [], None) and not (i == len(messages) - 1 and role == "assistant"):
            return f"messages.{i}: all messages must have non-empty content except for the optional final assistant message"
        if (why := _text_blocks_error("messages", content or [])) is not None:
            return why
    return None


def _system_error(system: Any) -> str | None:
    if isinstance(system, list):
        return _text_blocks_error("system", system)
    return None


def _tools_error(tools: Any, choice: Any) -> str | None:
    names = []
    for i, tool in enumerate(tools or []):
        name = tool.get("name") if isinstance(tool, dict) else None
        if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
            return f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
        if "input_schema" not in tool:
            return f"tools.{i}.custom.input_schema: Field required"
        names.append(name)
    if len(set(names)) != len(names):
        return "tools: Tool names must be unique."
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        return f"tool_choice: Input tag '{kind}' found using 'type' does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
    if not tools and kind != "none":
        return "tool_choice: tool_choice may only be specified while providing tools"
    if kind == "tool" and choice.get("name") not in names:
        return f"tool_choice: Tool '{choice.get('name')}' not found in tools"
    return None


def _cache_error(body: dict[str, Any]) -> str | None:
    marks = _cache_marks(body)
    if len(marks) > MAX_CACHE_BLOCKS:
        return f"A maximum of {MAX_CACHE_BLOCKS} blocks with cache_control may be provided. Found {len(marks)}."
    for mark in marks:
        if not isinstance(mark, dict) or mark.get("type") != "ephemeral":
            return "cache_control: Input tag found using 'type' does not match any of the expected tags: 'ephemeral'"
    return None


def invalid_batch(body: dict[str, Any]) -> str | None:
    """The 400 message for a Message Batches create body (its requests' params are checked later,
    each an `errored` result, as the API checks them), or None."""
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        return "requests: List should have at least 1 item after validation, not 0"
    seen: set[str] = set()
    for i, item in enumerate(requests):
        if not isinstance(item, dict) or "params" not in item:
            return f"requests.{i}.params: Field required"
        cid = item.get("custom_id")
        if not isinstance(cid, str) or not CUSTOM_ID_RE.match(cid):
            return f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        if cid in seen:
            return f"requests.{i}.custom_id: custom_id '{cid}' is used more than once; each request of a batch needs its own"
        seen.add(cid)
    return None


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)]


def sentences(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para or para.startswith("#") or para == "[...]":
            continue
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", para):
            if 8 <= len(s.split()) <= 60:
                out.append(s)
    return out


def _phrase(sentence: str) -> str:
    words = re.findall(r"[A-Za-z0-9'’-]+", sentence)
    return " ".join(words[:11]).lower()


def _question(kind: str, sentence: str) -> str:
    phrase = _phrase(sentence)
    if kind == "scenario":
        return f"If a friend faced a situation where {phrase}, what would you tell them?"
    if kind == "pushback":
        return f"Isn't it too simple to claim that {phrase}?"
    return f"What do you mean when you write that {phrase}?"


def _answer(kind: str, quote: str) -> str:
    body = quote.rstrip(".!?")
    body = body[0].lower() + body[1:] if body[:1].isupper() and not body.startswith("I ") else body
    if kind == "pushback":
        return f"I see the objection, but I still hold that {body}. That is what I wrote, and I stand by it."
    if kind == "scenario":
        return f"I would tell them what I believe: {body}. Then I would ask them to try it for a week."
    return f"I mean it plainly: {body}. I came to that from things I have done myself."


def _noisy(quote: str, rng: random.Random) -> str:
    choice = rng.randrange(4)
    if choice == 0:
        return quote.replace("'", "\u2019").replace('"', "\u201c")
    if choice == 1:
        return quote.replace(" ", "  ", 2)
    if choice == 2:
        return quote[:1].lower() + quote[1:]
    return quote.rstrip(".!?")


def _invent(sentence: str, rng: random.Random) -> str:
    if rng.random() < 0.5:  # made up from nothing
        words = rng.sample(FAKE_WORDS, 10)
        return "I have always believed that " + " ".join(words) + "."
    # A paraphrase: the same shape, every few words changed.
    words = sentence.split()
    for i in range(1, len(words), 3):
        words[i] = SWAPS.get(words[i].lower(), "truly")
    return " ".join(words)


class FakeAnthropic:
    """The server; `configure` changes its faults between runs, `produced` logs what it sent."""

    def __init__(self, **faults: Any) -> None:
        self.faults = Faults(**faults)
        self.produced: list[Produced] = []
        self.probes: list[tuple[str, str | None]] = []  # every probe question sent, with its fault
        self.requests: list[dict[str, Any]] = []  # {"path", "status", "body"} of every API (/v1/) request
        # What a client asks a loopback server to find out what it is (GET /props, /api/version):
        # kept apart, so "a dry run sends nothing" still means no API request.
        self.identify_requests: list[dict[str, Any]] = []
        self.rules: list[Rule] = []
        self._state = _State()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAnthropic:
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                return json.loads(raw or b"{}")

            def _send(self, status: int | str, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
                if status == "drop":  # a dropped connection: closed with no answer (the SDK retries it)
                    self.close_connection = True
                    return
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json" if raw is None else "application/binary")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                status, payload, headers, raw = app.handle("POST", self.path, body, dict(self.headers))
                self._send(status, payload, headers, raw)

            def do_GET(self) -> None:  # noqa: N802
                status, payload, headers, raw = app.handle("GET", self.path, {}, dict(self.headers))
                self._send(status, payload, headers, raw)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-anthropic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def configure(self, **faults: Any) -> FakeAnthropic:
        known = {f.name for f in fields(Faults)}
        unknown = set(faults) - known
        if unknown:
            raise TypeError(f"unknown fault {sorted(unknown)[0]!r}")
        self.faults = replace(self.faults, **faults)
        return self

    def reset_log(self) -> None:
        with self._lock:
            self.produced.clear()
            self.probes.clear()
            self.requests.clear()
            self.identify_requests.clear()

    def clear_cache(self) -> None:
        with self._lock:
            self._state.cache.clear()

    def fail(self, status: int | str, *, route: str = "messages", nth: int | None = None, attempt: int | None = None,
             contains: str | None = None, times: int | None = None, message: str = "") -> Rule:
        """Fault the requests that match (all conditions given): `route` one of ROUTES or "any";
        its `nth` request (1-based, retries counted); the `attempt`-th try of an identical request;
        a body holding `contains`; at most `times` times. `status` 429/500/529/... or "drop"."""
        if route not in (*ROUTES, "any"):
            raise ValueError(f"unknown route {route!r}: one of {', '.join(ROUTES)} or 'any'")
        rule = Rule(status, route, nth, attempt, contains, times, message)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        with self._lock:
            self.rules.clear()

    def forget_batches(self) -> None:
        """Every message batch sent so far is unknown from now on (404), like one past retention."""
        with self._lock:
            self._state.batches.clear()

    def _fault(self, route: str, key: str, body: dict[str, Any]):
        """The response of the first rule this request (the `attempt`-th with this key) matches, or None."""
        text = json.dumps(body, sort_keys=True) if body else ""
        with self._lock:
            attempt = self._state.route_attempts[key] = self._state.route_attempts.get(key, 0) + 1
            matched = [r for r in self.rules if r.matches(route, attempt, text)]  # every rule counts every request
            if not matched:
                return None
            rule = matched[0]
            rule.fired += 1
        if rule.status == "drop":
            return "drop", None, {}, None
        status = int(rule.status)
        kind = ERROR_KINDS.get(status, "api_error")
        headers = {"retry-after-ms": "10", "retry-after": "0"} if status in (429, 500, 529) else {}
        return status, api_error(kind, rule.message or f"injected {status} ({route})"), headers, None

    # -- routing --

    def handle(self, method: str, path: str, body: dict[str, Any], headers: dict[str, str]):
        f = self.faults
        path = path.split("?")[0]
        lower = {k.lower(): v for k, v in headers.items()}
        status, payload, extra, raw = self._route(method, path, body, lower, f)
        with self._lock:
            log = self.requests if path.startswith("/v1/") else self.identify_requests
            log.append({"method": method, "path": path, "status": status, "body": body})
        return status, payload, extra, raw

    def _route(self, method: str, path: str, body: dict[str, Any], headers: dict[str, str], f: Faults):
        if f.api_key is not None:
            given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
            if given != f.api_key:
                return 401, api_error("authentication_error", "invalid x-api-key"), {}, None
        if f.local and method == "GET" and path == "/props":
            return 200, {"default_generation_settings": {"n_ctx": f.n_ctx}, "total_slots": 1}, {}, None
        if method == "POST" and path == "/v1/messages":
            return self._fault("messages", "m:" + _sha(json.dumps(body, sort_keys=True)), body) or self._messages(body, f)
        if f.local:
            return 404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}, {}, None
        if method == "POST" and path == "/v1/messages/batches":
            return self._fault("batch-create", "c:" + _sha(json.dumps(body, sort_keys=True)), body) or self._create_batch(body, f)
        m = re.fullmatch(r"/v1/messages/batches/([^/]+)(/results)?", path)
        if method == "GET" and m:
            route = "batch-results" if m.group(2) else "batch-retrieve"
            return self._fault(route, f"{route}:{path}", {"id": m.group(1)}) or self._batch(m.group(1), bool(m.group(2)))
        return 404, api_error("not_found_error", f"no route {method} {path}"), {}, None

    def _messages(self, body: dict[str, Any], f: Faults):
        key = _sha(json.dumps(body, sort_keys=True))
        with self._lock:
            attempt = self._state.attempts[key] = self._state.attempts.get(key, 0) + 1
        if f.latency:
            time.sleep(f.latency)
        rng = random.Random(f"{f.seed}:{key}:http")
        roll = rng.random()
        if attempt == 1:  # a fault on the first attempt only: the SDK's retry then succeeds
            headers = {"retry-after-ms": "10", "retry-after": "0"}
            if roll < f.rate_429:
                return 429, api_error("rate_limit_error", "slow down"), headers, None
            if roll < f.rate_429 + f.rate_500:
                return 500, api_error("api_error", "internal error"), headers, None
            if roll < f.rate_429 + f.rate_500 + f.rate_529:
                return 529, api_error("overloaded_error", "overloaded"), headers, None
        if not f.local and (why := invalid_request(body, f.max_output)) is not None:
            return 400, api_error("invalid_request_error", why), {"request-id": "req_" + key[:20]}, None
        if f.no_tools and body.get("tools"):
            return 400, api_error("invalid_request_error", "tools are not supported by this model"), {}, None
        if f.local and (n := self.usage(body)["input_tokens"]) + int(body.get("max_tokens") or 0) > f.n_ctx:
            message = f"request ({n} tokens + max_tokens {body.get('max_tokens')}) exceeds the available context size ({f.n_ctx} tokens)"
            return 400, api_error("invalid_request_error", message), {}, None
        message = self.reply(body, f, key)
        return 200, message, {"request-id": "req_" + key[:20]}, None

    # -- replies --

    def usage(self, body: dict[str, Any]) -> dict[str, int]:
        """Input tokens as the API would bill them, with the cache simulated."""
        parts: list[tuple[str, bool]] = []
        if body.get("tools"):
            parts.append((json.dumps(body["tools"]), False))
        system = body.get("system") or []
        for block in _blocks(system):
            parts.append((block.get("text", ""), "cache_control" in block))
        for message in body.get("messages", []):
            for block in _blocks(message.get("content", "")):
                parts.append((block.get("text", ""), "cache_control" in block))
        marks = [i for i, (_, marked) in enumerate(parts) if marked]
        if not marks or self.faults.local:  # a local server has no prompt cache
            return {"input_tokens": count_tokens("".join(t for t, _ in parts))}
        prefix = "".join(t for t, _ in parts[: marks[-1] + 1])
        rest = "".join(t for t, _ in parts[marks[-1] + 1 :])
        n_prefix = count_tokens(prefix)
        if n_prefix < MIN_CACHEABLE:
            return {"input_tokens": n_prefix + count_tokens(rest), "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        cache_key = _sha(body.get("model", "") + prefix)
        with self._lock:
            hit = cache_key in self._state.cache
            self._state.cache.add(cache_key)
        return {
            "input_tokens": count_tokens(rest),
            "cache_creation_input_tokens": 0 if hit else n_prefix,
            "cache_read_input_tokens": n_prefix if hit else 0,
        }

    def reply(self, body: dict[str, Any], f: Faults, key: str, record: bool = True) -> dict[str, Any]:
        usage = self.usage(body)
        user_text = "".join(
            b.get("text", "") for m in body.get("messages", []) if m.get("role") == "user" for b in _blocks(m.get("content", ""))
        )
        rng = random.Random(f"{f.seed}:{key}:reply")
        field = "pairs"
        probes: list[tuple[str, str | None]] = []
        m = PROBES_RE.search(user_text)
        if m:
            field = "questions"
            openings = [text for _, text in DOC_RE.findall(user_text)]
            pairs, probes = probe_questions(openings, int(m.group(1)), user_text.lower(), f, rng)
            produced: list[Produced] = []
        else:
            pairs, produced = self._pairs(user_text, f, rng)
        use_tool = bool(body.get("tools")) and not f.text_only and (body.get("tool_choice") or {}).get("type") != "none"
        stop = "tool_use" if use_tool else "end_turn"
        roll = rng.random()
        malformed = roll < f.malformed or (use_tool and f.loose_tools)
        truncated = not malformed and roll < f.malformed + f.truncated
        if use_tool:
            choice = body.get("tool_choice") or {"type": "auto"}
            # a forced tool is the one named (invalid_request made sure it is there); else the first
            tool = choice["name"] if choice.get("type") == "tool" else body["tools"][0]["name"]
            payload: Any = {field: pairs}
            if malformed:
                payload = {field: "I have written the pairs above."} if rng.random() < 0.5 else {"items": pairs}
            elif truncated:
                first = dict(pairs[0]) if pairs else {}
                first.pop("quotes", None)
                payload, stop = {field: [first]}, "max_tokens"
            content = [{"type": "tool_use", "id": "toolu_" + key[:20], "name": tool, "input": payload}]
            out_text = json.dumps(payload)
        else:
            text = json.dumps({field: pairs}, ensure_ascii=False)
            if malformed:
                text = "Here are the pairs you asked for: " + text[: len(text) // 2] + " ... and so on."
            elif truncated:
                text, stop = text[: len(text) // 2], "max_tokens"
            content = [{"type": "text", "text": text}]
            out_text = text
        if record and not (malformed or truncated):
            with self._lock:
                self.produced.extend(produced)
                self.probes.extend(probes)
        usage["output_tokens"] = count_tokens(out_text)
        return {
            "id": "msg_" + key[:24],
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "unknown"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }

    def _pairs(self, user_text: str, f: Faults, rng: random.Random) -> tuple[list[dict[str, Any]], list[Produced]]:
        docs = DOC_RE.findall(user_text)
        doc_ids = tuple(d for d, _ in docs)
        m = COUNT_RE.search(user_text)
        n = int(m.group(1)) if m else 4
        kinds: list[str] = []
        if m:
            for part in m.group(2).split(","):
                name, _, count = part.partition(":")
                kinds += [name.strip()] * int(count or 0)
        kinds = (kinds or ["genuine"] * n)[:n]
        asked = []
        if "Questions already asked" in user_text:
            tail = user_text.split("Questions already asked", 1)[1]
            asked = [line[2:].strip() for line in tail.splitlines() if line.startswith("- ")]
        asked_text = " ".join(asked).lower()
        pool = [(d, s) for d, text in docs for s in sentences(text)]
        # A fixed order per batch, then skip sentences whose questions were already asked.
        random.Random(_sha("|".join(doc_ids))).shuffle(pool)
        if kinds and all(k == "boundary" for k in kinds):
            bpairs, made = boundary_pairs(pool, len(kinds), asked_text, f, rng)
            return bpairs, [Produced(q, fault, doc_ids, quote, sources, pair["answer"])
                            for (q, fault, quote, sources), pair in zip(made, bpairs, strict=True)]
        fresh = [(d, s) for d, s in pool if _phrase(s) not in asked_text]
        pairs: list[dict[str, Any]] = []
        produced: list[Produced] = []
        genuine_questions: list[str] = []
        for i, kind in enumerate(kinds):
            if i >= len(fresh):
                break
            doc_id, sentence = fresh[i]
            question = _question(kind, sentence)
            quote = sentence
            roll = rng.random()
            fault: str | None = None
            sources, quote_source = [doc_id], doc_id
            if roll < f.invented:
                fault, quote = "invented", _invent(sentence, rng)
            elif roll < f.invented + f.wrong_source:
                fault = "wrong-source"
                others = [d for d in doc_ids if d != doc_id]
                wrong = others[0] if others and rng.random() < 0.5 else f"elsewhere/{doc_id.split('/')[-1]}"
                sources, quote_source = [wrong], wrong
            elif roll < f.invented + f.wrong_source + f.duplicate and (asked or genuine_questions):
                fault = "duplicate"
                earlier = rng.choice(asked + genuine_questions)
                question = rng.choice(["So, ", "Tell me: ", ""]) + earlier[:1].lower() + earlier[1:]
                if question == earlier:
                    question = earlier.rstrip("?") + ", really?"
            elif rng.random() < f.quote_noise:
                quote = _noisy(sentence, rng)
            answer = _answer(kind, quote if fault == "invented" else sentence)
            if fault is None:
                genuine_questions.append(question)
            pairs.append({
                "type": kind,
                "question": question,
                "answer": answer,
                "sources": sources,
                "quotes": [{"source": quote_source, "text": quote}],
            })
            produced.append(Produced(question, fault, doc_ids, quote, tuple(sources)))
        return pairs, produced

    # -- message batches --

    def _create_batch(self, body: dict[str, Any], f: Faults):
        why = invalid_batch(body)
        if why is not None:
            return 400, api_error("invalid_request_error", why), {}, None
        requests = body["requests"]
        results = []
        for item in requests:
            params, cid = item["params"], item["custom_id"]
            key = _sha(json.dumps(params, sort_keys=True))
            results.append({"custom_id": cid, "result": self._batch_result(params, f, key, cid)})
        with self._lock:
            batch_id = f"msgbatch_{len(self._state.batches):04d}_{_sha(json.dumps(body))[:12]}"
            self._state.batches[batch_id] = {"results": results, "polls": 0, "n": len(requests)}
        return 200, self._batch_object(batch_id), {}, None

    def _batch_result(self, params: dict[str, Any], f: Faults, key: str, custom_id: str) -> dict[str, Any]:
        """One item's result: errored when its params are invalid (the API checks them as it
        processes the batch), else errored, expired or canceled at the configured rates, else succeeded."""
        why = invalid_request(params, f.max_output) if isinstance(params, dict) else "params: Input should be a valid dictionary"
        if why is not None:
            return {"type": "errored", "error": {**api_error("invalid_request_error", why), "request_id": None}}
        roll = random.Random(f"{f.seed}:{key}:{custom_id}:batch-item").random()
        if roll < f.batch_errored:
            return {"type": "errored", "error": {**api_error("api_error", "Internal server error"), "request_id": None}}
        if roll < f.batch_errored + f.batch_expired:
            return {"type": "expired"}
        if roll < f.batch_errored + f.batch_expired + f.batch_canceled:
            return {"type": "canceled"}
        return {"type": "succeeded", "message": self.reply(params, f, key)}

    def _batch_object(self, batch_id: str) -> dict[str, Any]:
        state = self._state.batches[batch_id]
        ended = state["polls"] > self.faults.batch_polls
        n = state["n"]
        counts = {"processing": 0 if ended else n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            for item in state["results"]:
                counts[item["result"]["type"]] += 1
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        canceled = ended and counts["canceled"] > 0
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": now,
            "expires_at": now,
            "ended_at": now if ended else None,
            "archived_at": None,
            "cancel_initiated_at": now if canceled else None,
            "results_url": f"{self.url}/v1/messages/batches/{batch_id}/results" if ended else None,
        }

    def _batch(self, batch_id: str, results: bool):
        with self._lock:
            state = self._state.batches.get(batch_id)
            if state is None:
                return 404, api_error("not_found_error", f"No batch with id {batch_id} was found"), {}, None
            if not results:
                state["polls"] += 1
            elif state["polls"] <= self.faults.batch_polls:  # the API has no results before the batch ends
                return 404, api_error("not_found_error", f"Results for batch {batch_id} are not yet available"), {}, None
        if not results:
            return 200, self._batch_object(batch_id), {}, None
        # Reversed, so the client must match results by custom_id, not by order.
        lines = "".join(json.dumps(r) + "\n" for r in reversed(state["results"]))
        return 200, None, {}, lines.encode()


def api_error(kind: str, message: str) -> dict[str, Any]:
    """The body of an API error, as the real API sends it."""
    return {"type": "error", "error": {"type": kind, "message": message}}
