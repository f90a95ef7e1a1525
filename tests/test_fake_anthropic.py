"""The Messages API double (tests/fake_anthropic.py) is as strict as the real API, driven through
the real `anthropic` SDK: each request the API refuses gets its 400 shape, faults fire on any
attempt and on the batch endpoints, batch items come back errored, expired or canceled, and it
counts tokens by a rule the dry-run estimator does not share.

    python -m pytest tests/test_fake_anthropic.py -q
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import anthropic
import pytest
from fake_anthropic import count_tokens, invalid_request

from mlx_partner.config import GenerateSettings, SourcesSettings
from mlx_partner.generate.plan import prepare
from mlx_partner.generate.requests import build_request
from mlx_partner.sources.documents import estimate_tokens
from mlx_partner.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def product_request(tmp_path_factory) -> dict:
    """The first request `generate` sends for the example workspace, built by the product."""
    root = tmp_path_factory.mktemp("fake-api") / "ws"
    shutil.copytree(REPO / "sources", root / "sources")
    shutil.copy(REPO / "profile.md", root / "profile.md")
    settings = GenerateSettings()
    prep = prepare(Workspace.at(root), settings, SourcesSettings())
    plan = prep.plans[0]
    return build_request(plan.todo[0], plan.batch, prep.docs, prep.profile, [], model=settings.model,
                         max_tokens=settings.max_tokens, mode="tool")


@pytest.fixture
def client(fake_anthropic):
    return anthropic.Anthropic(base_url=fake_anthropic.url, api_key="sk-ant-test", max_retries=0, timeout=20)


def _set(path: str, value):
    """A change to a request: set (or, for value DELETE, remove) the item at a dotted path."""
    def change(body: dict) -> None:
        *parents, last = path.split(".")
        node = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return change


DELETE = object()
TEXT = {"type": "text", "text": "More, please."}
MARKED = {"type": "text", "text": "A marked block.", "cache_control": {"type": "ephemeral"}}

# (name, change to the product's valid request, the real API's message, or a part of it)
INVALID = [
    ("model missing", _set("model", DELETE), "model: Field required"),
    ("model empty", _set("model", ""), "model: String should have at least 1 character"),
    ("max_tokens missing", _set("max_tokens", DELETE), "max_tokens: Field required"),
    ("max_tokens zero", _set("max_tokens", 0), "max_tokens: Input should be greater than or equal to 1"),
    ("max_tokens not an int", _set("max_tokens", 100.5), "max_tokens: Input should be a valid integer"),
    ("max_tokens a string", _set("max_tokens", "8192"), "max_tokens: Input should be a valid integer"),
    ("max_tokens over the model's limit", _set("max_tokens", 64001),
     "max_tokens: 64001 > 64000, which is the maximum allowed number of output tokens for claude-sonnet-5-5"),
    ("max_tokens over an older model's limit", lambda b: b.update(model="claude-3-5-haiku-20241022", max_tokens=8193),
     "max_tokens: 8193 > 8192, which is the maximum allowed number of output tokens for claude-3-5-haiku-20241022"),
    ("no messages", _set("messages", []), "messages: at least one message is required"),
    ("first message not the user's", _set("messages.0.role", "assistant"), 'first message must use the "user" role'),
    ("a system role in messages", _set("messages.0.role", "system"), "messages.0.role: Input should be 'user' or 'assistant'"),
    ("two user turns in a row", lambda b: b["messages"].append({"role": "user", "content": [TEXT]}),
     'roles must alternate between "user" and "assistant", but found multiple "user" roles in a row'),
    ("two assistant turns in a row", lambda b: b["messages"].extend([{"role": "assistant", "content": [TEXT]}] * 2),
     'found multiple "assistant" roles in a row'),
    ("empty text block in a message", _set("messages.0.content.1.text", ""), "messages: text content blocks must be non-empty"),
    ("whitespace text block in a message", _set("messages.0.content.1.text", " \n"),
     "messages: text content blocks must contain non-whitespace text"),
    ("empty message content", _set("messages.0.content", ""), "messages.0: all messages must have non-empty content"),
    ("empty text block in system", _set("system.0.text", ""), "system: text content blocks must be non-empty"),
    ("tool_choice names no tool", _set("tool_choice.name", "record_nothing"), "tool_choice: Tool 'record_nothing' not found in tools"),
    ("tool_choice without tools", _set("tools", DELETE), "tool_choice may only be specified while providing tools"),
    ("five cache_control blocks", lambda b: b["messages"][0]["content"].extend([MARKED] * 4),
     "A maximum of 4 blocks with cache_control may be provided. Found 5."),
    ("cache_control on tools and system too", lambda b: (b["tools"][0].update(cache_control={"type": "ephemeral"}),
                                                         b["system"][0].update(cache_control={"type": "ephemeral"}),
                                                         b["messages"][0]["content"].extend([MARKED] * 3)),
     "A maximum of 4 blocks with cache_control may be provided. Found 6."),
    ("an unknown field", _set("temperatures", 0.5), "temperatures: Extra inputs are not permitted"),
]


def test_the_products_request_is_valid(product_request, client, fake_anthropic):
    assert invalid_request(product_request) is None
    message = client.messages.create(**product_request)
    assert message.content[0].type == "tool_use" and message.content[0].name == product_request["tool_choice"]["name"]


@pytest.mark.parametrize("name, change, message", INVALID, ids=[case[0] for case in INVALID])
def test_an_invalid_request_gets_the_real_apis_400(name, change, message, product_request, fake_anthropic):
    body = copy.deepcopy(product_request)
    change(body)
    # Through the SDK's raw HTTP (its own type checks would stop some of these before they are sent)
    client = anthropic.Anthropic(base_url=fake_anthropic.url, api_key="sk-ant-test", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as err:
        client.post("/v1/messages", body=body, cast_to=anthropic.types.Message)
    assert err.value.status_code == 400
    assert err.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": err.value.body["error"]["message"]}}
    assert message in err.value.body["error"]["message"]
    assert [r["status"] for r in fake_anthropic.requests] == [400]


def test_four_cache_control_blocks_are_allowed(product_request, client):
    body = copy.deepcopy(product_request)
    body["messages"][0]["content"].extend([MARKED] * 3)
    assert invalid_request(body) is None
    client.messages.create(**body)


def test_a_forced_tool_is_the_one_named_not_the_first(product_request, client):
    body = copy.deepcopy(product_request)
    other = {**body["tools"][0], "name": "record_other"}
    body["tools"] = [other, *body["tools"]]
    message = client.messages.create(**body)
    assert message.content[0].name == product_request["tool_choice"]["name"]


# --- Message Batches -------------------------------------------------------------------------


@pytest.mark.parametrize("custom_ids, message", [
    (["has space"], "requests.0.custom_id: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'"),
    (["x" * 65], "requests.0.custom_id: String should match pattern"),
    ([""], "requests.0.custom_id: String should match pattern"),
    (["r-1", "dot.ted"], "requests.1.custom_id: String should match pattern"),
    (["r-1", "r-2", "r-1"], "requests.2.custom_id: custom_id 'r-1' is used more than once"),
])
def test_a_bad_batch_custom_id_gets_a_400(custom_ids, message, product_request, client):
    requests = [{"custom_id": cid, "params": product_request} for cid in custom_ids]
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.batches.create(requests=requests)
    assert err.value.body["error"]["type"] == "invalid_request_error" and message in err.value.body["error"]["message"]


def _results(client, fake_anthropic, requests) -> dict:
    fake_anthropic.configure(batch_polls=0)
    batch = client.messages.batches.create(requests=requests)
    batch = client.messages.batches.retrieve(batch.id)
    assert batch.processing_status == "ended"
    return {item.custom_id: item.result for item in client.messages.batches.results(batch.id)}, batch.request_counts


def test_a_batch_checks_its_params_as_it_processes_them(product_request, client, fake_anthropic):
    """Like the API, an invalid request in a batch does not refuse the batch: it comes back errored."""
    bad = {**product_request, "max_tokens": 0}
    results, counts = _results(client, fake_anthropic, [{"custom_id": "good", "params": product_request},
                                                         {"custom_id": "bad", "params": bad}])
    assert results["good"].type == "succeeded" and results["bad"].type == "errored"
    assert results["bad"].error.error.type == "invalid_request_error"
    assert results["bad"].error.error.message == "max_tokens: Input should be greater than or equal to 1"
    assert (counts.succeeded, counts.errored) == (1, 1)


@pytest.mark.parametrize("kind", ["errored", "expired", "canceled"])
def test_batch_items_come_back_errored_expired_or_canceled(kind, product_request, client, fake_anthropic):
    fake_anthropic.configure(**{f"batch_{kind}": 1.0})
    results, counts = _results(client, fake_anthropic, [{"custom_id": f"r-{i}", "params": product_request} for i in range(3)])
    assert {r.type for r in results.values()} == {kind} and getattr(counts, kind) == 3 and counts.succeeded == 0
    if kind == "errored":
        assert {r.error.error.type for r in results.values()} == {"api_error"}


def test_seeded_rates_mix_item_outcomes(product_request, client, fake_anthropic):
    fake_anthropic.configure(seed=1, batch_errored=0.25, batch_expired=0.25, batch_canceled=0.25)
    results, counts = _results(client, fake_anthropic, [{"custom_id": f"r-{i}", "params": product_request} for i in range(40)])
    kinds = {r.type for r in results.values()}
    assert kinds == {"succeeded", "errored", "expired", "canceled"}
    assert counts.succeeded + counts.errored + counts.expired + counts.canceled == 40


def test_a_forgotten_batch_is_not_found(product_request, client, fake_anthropic):
    batch = client.messages.batches.create(requests=[{"custom_id": "r-1", "params": product_request}])
    fake_anthropic.forget_batches()
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


# --- faults on any attempt and any route -----------------------------------------------------


def statuses(server, path_part: str = "") -> list:
    return [r["status"] for r in server.requests if path_part in r["path"]]


def test_a_fault_on_the_second_and_third_attempts_too(product_request, fake_anthropic):
    """The rates fault only a first attempt; a rule faults whichever attempt it names."""
    fake_anthropic.fail(529, attempt=1)
    fake_anthropic.fail(429, attempt=2)
    fake_anthropic.fail(500, attempt=3)
    client = anthropic.Anthropic(base_url=fake_anthropic.url, api_key="k", max_retries=3)
    client.messages.create(**product_request)
    assert statuses(fake_anthropic) == [529, 429, 500, 200]
    overloaded = anthropic.Anthropic(base_url=fake_anthropic.url, api_key="k", max_retries=1)
    fake_anthropic.fail(529, contains="Round 1 of")  # every request that matches, every attempt
    with pytest.raises(anthropic.APIStatusError) as err:
        overloaded.messages.create(**product_request)
    assert err.value.status_code == 529 and err.value.body["error"]["type"] == "overloaded_error"


def test_the_nth_request_and_at_most_times(product_request, fake_anthropic):
    rule = fake_anthropic.fail(500, nth=3)
    limited = fake_anthropic.fail(429, times=1)
    client = anthropic.Anthropic(base_url=fake_anthropic.url, api_key="k", max_retries=2)
    for _ in range(3):
        client.messages.create(**product_request)
    # 1st: 429 (times=1), retried: 200; 2nd: 200... the rule counts every request of its route
    assert statuses(fake_anthropic) == [429, 200, 500, 200, 200]
    assert (rule.fired, limited.fired) == (1, 1)


def test_a_dropped_connection_is_retried_and_else_a_connection_error(product_request, fake_anthropic):
    fake_anthropic.fail("drop", nth=1)
    client = anthropic.Anthropic(base_url=fake_anthropic.url, api_key="k", max_retries=1)
    client.messages.create(**product_request)
    assert statuses(fake_anthropic) == ["drop", 200]
    fake_anthropic.fail("drop", route="any")
    with pytest.raises(anthropic.APIConnectionError):
        anthropic.Anthropic(base_url=fake_anthropic.url, api_key="k", max_retries=0).messages.create(**product_request)


@pytest.mark.parametrize("route, status", [("batch-create", 529), ("batch-retrieve", 500), ("batch-results", "drop"),
                                           ("batch-retrieve", 429)])
def test_the_batch_endpoints_fault_too(route, status, product_request, fake_anthropic):
    fake_anthropic.configure(batch_polls=0)
    rule = fake_anthropic.fail(status, route=route, nth=1)
    client = anthropic.Anthropic(base_url=fake_anthropic.url, api_key="k", max_retries=2)
    batch = client.messages.batches.create(requests=[{"custom_id": "r-1", "params": product_request}])
    batch = client.messages.batches.retrieve(batch.id)
    assert [r.result.type for r in client.messages.batches.results(batch.id)] == ["succeeded"]
    assert rule.fired == 1 and status in statuses(fake_anthropic, "/batches")
    with pytest.raises(ValueError, match="unknown route"):
        fake_anthropic.fail(500, route="batches")


# --- tokens: the server's own count -----------------------------------------------------------


@pytest.mark.parametrize("text, tokens", [
    ("", 0), (" the", 1), ("The cat sat.", 4), ("understanding", 2), ("2026", 2),
    ('{"type": "object"}', 6), ("don't", 2), ("a\n\nb", 4),
])
def test_count_tokens(text, tokens):
    assert count_tokens(text) == tokens


def test_the_servers_count_is_not_the_estimators(product_request):
    """JSON and prose tokenize differently under the server's rule; 4 characters a token does not
    see it. So the dry-run test (test_generate_cli.py) compares two counts, not one count twice."""
    schema = json.dumps(product_request["tools"])
    prose = product_request["messages"][0]["content"][0]["text"]
    assert count_tokens(schema) / estimate_tokens(schema) > 1.1  # JSON: denser than 4 characters a token
    assert count_tokens(prose) / estimate_tokens(prose) < 0.98  # English prose: sparser
