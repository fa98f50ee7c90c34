"""schemathesis fuzzes every operation of `/api/openapi.json` against the running bot: no 5xx, and
every response (status, content type, body) matches what the document says."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from tests.server_helpers import fake_model, running_app


async def test_openapi_document_matches_the_api(tmp_path: Path) -> None:
    schemathesis = shutil.which("schemathesis") or shutil.which("st")
    command = [schemathesis] if schemathesis else [sys.executable, "-m", "schemathesis.cli"]
    async with fake_model() as fake, running_app(tmp_path, fake, api_key="schema-key", rate_limit_per_minute=0) as bot:
        process = await asyncio.create_subprocess_exec(
            *command, "run", f"{bot.url}/api/openapi.json", "--checks", "all",
            "--exclude-checks", "positive_data_acceptance",  # a valid-looking unknown id is still a 404
            "--header", "Authorization: Bearer schema-key", "--max-examples", "15", "--seed", "1",
            "--phases", "examples,coverage,fuzzing,stateful", "--workers", "4", "--no-shrink",
            "--request-timeout", "20", "--suppress-health-check", "all",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 240)
        operations = bot.server.operations
    report = "\n".join(line[:300] for line in output.decode(errors="replace").splitlines())
    assert process.returncode == 0, report[-8000:]
    assert "No issues found" in report
    assert f"Tested: {len(operations)}" in report  # every operation was reached, sessions through links
