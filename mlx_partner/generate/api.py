"""The Messages API boundary, pure: which credential is set, keeping it out of messages, and an
SDK error -> (fatal?, one plain sentence).

    credential = check_credentials(os.environ)      # GenerationError if none is set
    fatal, sentence = describe_api_error(exc, base_url, credential)

`anthropic` is imported only inside `describe_api_error`, so `--help` stays instant.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ..errors import GenerationError

SECRET_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")


def check_credentials(environ: Mapping[str, str], loopback: bool = False) -> str:
    """The variable that holds the credential, or "" for a loopback endpoint (it needs none); a
    GenerationError before any work if there is none."""
    for name in SECRET_VARS:
        if environ.get(name, "").strip():
            return name
    if environ.get("ANTHROPIC_PROFILE"):
        return "ANTHROPIC_PROFILE"
    if loopback:
        return ""
    raise GenerationError(
        "No API credential is set: export ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN for an "
        "Anthropic-compatible endpoint, with ANTHROPIC_BASE_URL), or use --dry-run to see the plan."
    )


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Remove the credential's value (and anything shaped like an Anthropic key) from a message."""
    environ = os.environ if environ is None else environ
    for name in SECRET_VARS:
        secret = environ.get(name, "").strip()
        if len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return re.sub(r"sk-ant-[A-Za-z0-9_\-]{4,}", "sk-ant-[redacted]", text)


def describe_api_error(exc: BaseException, base_url: str, credential: str) -> tuple[bool, str]:
    """(fatal, one plain sentence) for an error the SDK gave up on after its retries."""
    import anthropic

    status = getattr(exc, "status_code", None)
    rid = getattr(exc, "request_id", None)
    where = f" (request id {rid})" if rid else ""
    if isinstance(exc, anthropic.AuthenticationError):
        what = "API key in ANTHROPIC_API_KEY" if credential == "ANTHROPIC_API_KEY" else f"credential in {credential or 'no variable (none is set)'}"
        return True, f"The {what} was rejected (401) by {base_url}; check it and run again."
    if isinstance(exc, anthropic.PermissionDeniedError):
        return True, f"The credential in {credential} may not use this model or endpoint (403) at {base_url}{where}."
    if isinstance(exc, anthropic.NotFoundError):
        return True, f"{base_url} answered 404 (not found){where}: check the model name (--model) and ANTHROPIC_BASE_URL."
    if isinstance(exc, anthropic.APITimeoutError):
        return False, f"the request to {base_url} timed out after the SDK's retries"
    if isinstance(exc, anthropic.APIConnectionError):
        return True, f"Could not reach the API at {base_url}; check your network connection and ANTHROPIC_BASE_URL."
    if isinstance(exc, anthropic.APIStatusError):
        message = error_message(exc)
        return False, f"the API answered {status}{where}: {message}"
    return False, f"the API call failed: {exc}"


def error_message(exc: Any) -> str:
    """The API's own message from an SDK error, at most 300 characters."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    return str(getattr(exc, "message", exc))[:300]


def rejects_tools(exc: BaseException) -> bool:
    """An endpoint saying it does not support tools (400/422 naming tools)."""
    status = getattr(exc, "status_code", None)
    return status in (400, 422) and "tool" in error_message(exc).lower()
