"""Markdown → Telegram HTML, chunking, per-chat pacing, the typing indicator and ffmpeg conversion."""

from __future__ import annotations

import asyncio
import html
import random
import time

import pytest
from telegram import Bot

from connectors.telegram_connector.formatting import (
    html_to_plain,
    markdown_to_html,
    render_chunks,
    split_html,
    visible_length,
)
from connectors.telegram_connector.outbox import Target, Typing
from connectors.telegram_connector.pacing import ChatPacer
from plugins.voice import AudioConversionError, to_ogg_opus, to_pcm
from tests.fakes.openai_server import sine_wav
from tests.fakes.telegram_api import FakeTelegram, parse_html

TOKEN = "123123123:AAformattingTESTtokenabcdefghijklmnopq"


@pytest.mark.parametrize(("markdown", "expected"), [
    ("**bold** and *it* and ~~gone~~", "<b>bold</b> and <i>it</i> and <s>gone</s>"),
    ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
    ("`x<y>` stays code", "<code>x&lt;y&gt;</code> stays code"),
    ("```py\nif a < b: **no**\n```", '<pre><code class="language-py">if a &lt; b: **no**</code></pre>'),
    ("[site](https://e.com/?a=1&b=2)", '<a href="https://e.com/?a=1&amp;b=2">site</a>'),
    ("[bad](javascript:alert(1))", "[bad](javascript:alert(1))"),
    ("snake_case_name and 2*3*4", "snake_case_name and 2*3*4"),
    ("# Title\n- one\n> quoted", "<b>Title</b>\n• one\n<blockquote>quoted</blockquote>"),
    ("**a *b** c*", "**a *b** c*"),  # would cross tags: sent unformatted
    ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
])
def test_markdown_becomes_safe_telegram_html(markdown: str, expected: str) -> None:
    rendered = markdown_to_html(markdown)
    assert rendered == expected
    assert parse_html(rendered)[1] is None


def test_chunks_are_valid_within_the_limit_and_lose_nothing() -> None:
    rng = random.Random(7)
    words = ["**bold text**", "_it_", "`a<b>`", "&", "plain", "😀", "[l](https://x.org)", "word"]
    text = "\n\n".join(
        "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(rng.randint(1, 4)))
        for _ in range(120)
    )
    chunks = render_chunks(text)
    assert len(chunks) > 3
    plain = []
    for chunk in chunks:
        visible, error = parse_html(chunk)
        assert error is None, chunk
        assert len(html.unescape(visible).encode("utf-16-le")) // 2 <= 4096
        plain.append(html_to_plain(chunk))
    squash = "".join(html_to_plain(markdown_to_html(text)).split())
    assert "".join("".join(plain).split()) == squash


def test_splits_prefer_paragraphs_then_lines_then_words() -> None:
    paragraphs = ["a" * 3000, "b" * 3000]
    assert render_chunks("\n\n".join(paragraphs)) == paragraphs
    early_line = render_chunks("x" * 100 + "\n" + "y " * 2100)
    assert early_line[0] == "x" * 100 + "\n" + ("y " * 1998).rstrip(), "a message is not cut at 100 characters"
    words = render_chunks("word " * 2000)
    assert all(c.endswith("word") for c in words)


def test_counts_utf16_and_never_cuts_an_entity_or_a_tag() -> None:
    assert [visible_length(c) for c in split_html("😀" * 3000)] == [4096, 1904]
    chunks = split_html("&amp;" * 5000)
    assert [visible_length(c) for c in chunks] == [4096, 904]
    assert all(c.startswith("&amp;") and c.endswith("&amp;") for c in chunks)
    tagged = split_html("<b>" + "bold " * 1500 + "</b>")
    assert len(tagged) == 2 and all(c.startswith("<b>") and c.endswith("</b>") for c in tagged)


async def test_pacer_holds_a_private_chat_to_its_rate_but_not_other_chats() -> None:
    pacer = ChatPacer(private_per_second=10, private_burst=1, group_per_minute=600)
    started = time.monotonic()
    for _ in range(3):
        async with pacer.slot(42):
            pass
    paced = time.monotonic() - started
    started = time.monotonic()
    for chat in (43, 44, -100_1):
        async with pacer.slot(chat):
            pass
    assert paced >= 0.15 and time.monotonic() - started < 0.05


async def test_typing_is_refreshed_until_stopped() -> None:
    async with FakeTelegram(TOKEN) as telegram:
        bot = Bot(TOKEN, base_url=f"{telegram.root}/bot")
        async with bot:
            typing = Typing(bot, Target(42, thread_id=7), interval=0.05).start()
            await telegram.wait_for("sendChatAction", count=3)
            typing.stop()
            await asyncio.sleep(0.15)
            calls = telegram.calls_to("sendChatAction")
            assert 3 <= len(calls) <= 4
            assert all(c["action"] == "typing" and int(c["message_thread_id"]) == 7 for c in calls)


async def test_ffmpeg_makes_opus_voice_notes_and_pcm() -> None:
    voice = await to_ogg_opus(sine_wav(seconds=0.5))
    assert voice.startswith(b"OggS") and b"OpusHead" in voice
    pcm = await to_pcm(sine_wav(seconds=0.5))
    assert len(pcm) == 48_000 * 2 * 2 // 2  # half a second, stereo, 16-bit
    with pytest.raises(AudioConversionError, match="ffmpeg failed"):
        await to_ogg_opus(b"not audio at all")


HOSTILE_SIZE = 20_000  # instant when formatting is linear; minutes when it is quadratic (issue #10)


@pytest.mark.parametrize("text", [
    "# a" + " " * HOSTILE_SIZE + "b",
    "[" * HOSTILE_SIZE,
    "*a " * (HOSTILE_SIZE // 3),
    "**a " * (HOSTILE_SIZE // 4),
    "_a " * (HOSTILE_SIZE // 3),
    "~~a " * (HOSTILE_SIZE // 4),
    "||a " * (HOSTILE_SIZE // 4),
    "```" + "a" * HOSTILE_SIZE,
    "[a](http:" * (HOSTILE_SIZE // 9),
    "\n" + " " * HOSTILE_SIZE + "- x",
], ids=["heading-spaces", "brackets", "italics", "bold", "underscores", "strike", "spoilers", "fence", "links",
        "indent"])
def test_hostile_markdown_is_sent_as_valid_chunks_with_every_character(text: str) -> None:
    chunks = render_chunks(text)
    assert chunks
    for chunk in chunks:
        visible_text, error = parse_html(chunk)
        assert error is None
        assert len(html.unescape(visible_text).encode("utf-16-le")) // 2 <= 4096
    sent = "".join("".join(html_to_plain(c).split()) for c in chunks)
    assert sent == "".join(text.replace("# ", "", 1).replace("- ", "• ").split()), "nothing lost, nothing formatted"


def test_a_run_of_newlines_is_nothing_to_send() -> None:
    assert render_chunks("\n" * HOSTILE_SIZE) == []


def test_emphasis_closed_far_away_still_pairs_and_spans_chunks() -> None:
    count = HOSTILE_SIZE // 3
    text = "*a " * count + "*b*"
    assert markdown_to_html(text) == "<i>a " + "*a " * (count - 1) + "*b</i>"
    chunks = render_chunks(text)
    assert len(chunks) == 5 and all(c.startswith("<i>") and c.endswith("</i>") for c in chunks)
    assert markdown_to_html("**a " * 3 + "\n**b**") == "<b>a **a **a \n**b</b>", "bold may span lines"
    assert markdown_to_html("*a\nb* and *c*") == "*a\nb* and <i>c</i>", "italics may not"
