"""``xwinbot discord`` as its own process, connected to a loopback fake Discord.

The adapter already takes its REST base from ``XWINBOT_DISCORD_API_URL``; discord.py's ``Client`` connects straight
to the class attribute ``DiscordWebSocket.DEFAULT_GATEWAY`` (it never asks ``/gateway/bot``), so this entry point
points that one attribute at ``SOAK_DISCORD_GATEWAY`` (what ``FakeDiscord.patch_discord_py`` does in-process) and
then runs the real command: ``python -m tests.helpers.soak_discord_adapter discord``.
"""

from __future__ import annotations

import os
import sys

import discord.gateway
import yarl

from worker.cli import main

if __name__ == "__main__":
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["SOAK_DISCORD_GATEWAY"])
    sys.exit(main(sys.argv[1:]))
