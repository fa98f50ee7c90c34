"""schemathesis fuzzes every operation of `/api/openapi.json` against the running bot: no 5xx, and
every response (status, content type, body) matches what the document says — once with the admin
key, once as a web chat visitor (WEB_CHAT=public, no key), for whom the admin API must answer 401.
Plugins' /api routes (the knowledge documents: list, multipart upload, delete) are operations of the
document like the rest; the upload's example gives the fuzzer a file it accepts."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from tests.server_helpers import fake_model, running_app

KEY = "schema-key"


@pytest.mark.parametrize("caller", ["admin", "visitor"])
async def test_openapi_document_matches_the_api(tmp_path: Path, caller: str) -> None:
    schemathesis = shutil.which("schemathesis") or shutil.which("st")
    command = [schemathesis] if schemathesis else [sys.executable, "-m", "schemathesis.cli"]
    # A visitor is expected to get only 401 from the admin operations: no warning for that.
    auth = ["--header", f"Authorization: Bearer {KEY}"] if caller == "admin" else [
        "--warnings", "missing_test_data,validation_mismatch,unused_openapi_auth,method_not_allowed"]
    # Generous visitor limits: the fuzzer is one client, and the limits have tests of their own.
    limits = {"web_chat_ip_per_minute": 100_000, "web_chat_messages_per_minute": 100_000,
              "web_chat_sessions_per_ip": 1000, "web_chat_max_sessions": 1000}
    async with fake_model() as fake, running_app(tmp_path, fake, api_key=KEY, rate_limit_per_minute=0,
                                                 web_chat="public", **limits) as bot:
        process = await asyncio.create_subprocess_exec(
            *command, "run", f"{bot.url}/api/openapi.json", "--checks", "all",
            "--exclude-checks", "positive_data_acceptance",  # a valid-looking unknown id is still a 404
            *auth, "--max-examples", "15", "--seed", "1",
            # One worker: with several, hypothesis races in its threads on 3.11 (SystemError: AST constructor
            # recursion depth mismatch), a fuzzer crash that says nothing about the API.
            "--phases", "examples,coverage,fuzzing,stateful", "--workers", "1", "--no-shrink",
            "--request-timeout", "20", "--suppress-health-check", "all",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 240)
        operations = bot.server.operations
    report = "\n".join(line[:300] for line in output.decode(errors="replace").splitlines())
    assert process.returncode == 0, report[-8000:]
    assert "No issues found" in report
    assert f"Tested: {len(operations)}" in report  # every operation was reached, sessions through links
    assert {"knowledge_list_documents", "knowledge_upload_documents", "knowledge_delete_document"} <= {
        op.operation_id for op in operations}
