"""Audio conversion with ffmpeg, shared by the connectors that speak.

Text-to-speech models return MP3 or WAV; Telegram voice notes must be OGG/Opus and Discord voice
wants raw 48 kHz PCM. ffmpeg runs as an asyncio subprocess fed through pipes, so a conversion never
blocks the event loop and no temporary file is left behind.
"""

from __future__ import annotations

import asyncio
import shutil

FFMPEG_TIMEOUT = 60.0


class AudioConversionError(RuntimeError):
    """ffmpeg is missing, failed, or did not finish in time; the message says which."""


async def _ffmpeg(audio: bytes, output_args: list[str]) -> bytes:
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise AudioConversionError("ffmpeg is not installed; install it to send or play voice")
    process = await asyncio.create_subprocess_exec(
        binary, "-hide_banner", "-loglevel", "error", "-i", "pipe:0", *output_args, "pipe:1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(audio), FFMPEG_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AudioConversionError(f"ffmpeg took longer than {FFMPEG_TIMEOUT:.0f}s") from None
    if process.returncode != 0 or not stdout:
        detail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise AudioConversionError(f"ffmpeg failed (exit {process.returncode}): {detail[0][:200]}")
    return stdout


async def to_ogg_opus(audio: bytes) -> bytes:
    """Any audio ffmpeg can read → mono 48 kHz OGG/Opus, the format of a Telegram voice note."""
    return await _ffmpeg(audio, ["-vn", "-ac", "1", "-ar", "48000", "-c:a", "libopus", "-b:a", "32k",
                                 "-application", "voip", "-f", "ogg"])


async def to_pcm(audio: bytes, rate: int = 48000, channels: int = 2) -> bytes:
    """Any audio ffmpeg can read → signed 16-bit little-endian PCM (Discord voice: 48 kHz stereo)."""
    return await _ffmpeg(audio, ["-vn", "-ac", str(channels), "-ar", str(rate), "-f", "s16le"])


__all__ = ["AudioConversionError", "to_ogg_opus", "to_pcm"]
