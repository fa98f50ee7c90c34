"""`python -m bot` with no platform token: the console chat, scripted through piped stdin."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.fakes import SERVER_ERROR, FakeOpenAI

ROOT = Path(__file__).parents[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("OPENAI", "ANTHROPIC", "TELEGRAM", "DISCORD", "MODEL_", "LOCAL_"))}
    return {**clean, "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path / "data"), "PORT": "0",
            "HOST": "127.0.0.1", "CHARACTER_PATH": str(ROOT / "characters" / "default.json"), **extra}


async def _run_bot(stdin: bytes, env: dict[str, str], timeout: float = 120) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=env["DATA_DIR"].rsplit("/", 1)[0], env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    return process.returncode, out.decode(), err.decode()


async def test_piped_stdin_prints_one_reply_per_line_and_exits_0(tmp_path: Path):
    async with FakeOpenAI() as fake:
        replies = iter(["Hi! I'm Parley.", "Blue, like a clear sky."])
        fake.reply = lambda body: ("<response><thought>t</thought><actions>REPLY</actions>"
                                   f"<text>{next(replies)}</text></response>")
        env = _env(tmp_path, OPENAI_API_KEY="sk-console-test-key-123", OPENAI_BASE_URL=fake.base_url,
                   MODEL_PROVIDERS="openai")
        code, out, err = await _run_bot(b"hello there\nwhat's your favourite colour?\n", env)
        assert code == 0, err
        assert out.splitlines() == ["Hi! I'm Parley.", "Blue, like a clear sky."]
        second_prompt = fake.requests_to("/chat/completions")[1].body["messages"][-1]["content"]
        assert "hello there" in second_prompt and "Hi! I'm Parley." in second_prompt
        assert "sk-console-test-key-123" not in out + err


async def test_console_history_survives_a_restart(tmp_path: Path):
    async with FakeOpenAI(reply="<response><actions>REPLY</actions><text>noted</text></response>") as fake:
        env = _env(tmp_path, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=fake.base_url, MODEL_PROVIDERS="openai")
        assert (await _run_bot(b"my name is Robin\n", env))[0] == 0
        assert (await _run_bot(b"what is my name?\n", env))[0] == 0
        last_prompt = fake.requests_to("/chat/completions")[-1].body["messages"][-1]["content"]
        assert "my name is Robin" in last_prompt


async def test_failing_model_prints_the_apology_and_keeps_going(tmp_path: Path):
    async with FakeOpenAI(reply="<response><actions>REPLY</actions><text>back again</text></response>") as fake:
        fake.script(SERVER_ERROR)
        env = _env(tmp_path, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=fake.base_url, MODEL_PROVIDERS="openai",
                   MODEL_MAX_RETRIES="0", ERROR_REPLY="Oops, try again.")
        code, out, err = await _run_bot(b"first\nsecond\n", env)
        assert code == 0, err
        assert out.splitlines() == ["Oops, try again.", "back again"]
        failures = [line for line in err.splitlines() if "every model for TEXT_LARGE failed" in line]
        assert len(failures) == 1 and "openai" in failures[0], err
        assert "Traceback" not in err


async def test_zero_setup_local_model_answers(tmp_path: Path):
    """The newcomer path: no key, no token; the bundled SmolLM2 answers every line offline."""
    lines = [b"hi!", b"what can you do?", b"my dog is called Rex.", b"tell me a joke", b"what is my dog called?",
             b"who are you?"]
    code, out, err = await _run_bot(b"\n".join(lines) + b"\n", _env(tmp_path))
    assert code == 0, err
    replies = out.splitlines()
    assert len(replies) == len(lines) and all(r.strip() for r in replies), out
    assert "rex" in replies[4].lower()
    assert "Traceback" not in err


async def test_unreachable_api_falls_back_to_the_local_model_without_leaking_the_template(tmp_path: Path):
    env = _env(tmp_path, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL="http://127.0.0.1:9/v1", MODEL_MAX_RETRIES="0")
    code, out, err = await _run_bot(b"hi!\nwhat can you do?\n", env)
    assert code == 0, err
    replies = out.splitlines()
    assert len(replies) == 2 and all(r.strip() for r in replies), out
    for leak in ("<response>", "Available actions", "Write Parley's next message", "<text>"):
        assert leak not in out
    assert "answered by local" in err and "Traceback" not in err
