"""The loopback fake Discord, driven by the real discord.py client (REST + gateway over 127.0.0.1)."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import urllib.error
import urllib.request

import discord
import pytest
from discord.ext import commands

from tests.fakes.fake_discord import ClientThread, FakeDiscord

GATE = threading.Event()  # released by the test once it expired the /late interaction


class Persistent(discord.ui.View):
    def __init__(self, seen: dict):
        super().__init__(timeout=None)
        self.seen = seen

    @discord.ui.button(label="Again", custom_id="xwin:again")
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button):
        self.seen.setdefault("clicks", []).append((interaction.user.id, interaction.message.id))
        await interaction.response.send_message("clicked", ephemeral=True)


def make_bot(fake: FakeDiscord, seen: dict) -> commands.Bot:
    bot = commands.Bot(command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.1)
    guild = discord.Object(fake.guild_id)

    @bot.tree.command(name="ping", description="ping", guild=guild)
    async def ping(interaction: discord.Interaction):
        await interaction.response.defer()
        await interaction.followup.send("pong")
        await interaction.edit_original_response(content="pong (edited)")

    @bot.tree.command(name="echo", description="echo", guild=guild)
    async def echo(interaction: discord.Interaction, text: str, times: int = 1, loud: bool = False):
        seen["echo"] = (text, times, loud, interaction.user.id)
        await interaction.response.send_message(text * times, ephemeral=not loud,
                                                allowed_mentions=discord.AllowedMentions.none())

    @bot.tree.command(name="late", description="late", guild=guild)
    async def late(interaction: discord.Interaction):
        await interaction.response.defer(ephemeral=True)
        await asyncio.to_thread(GATE.wait, 5)
        try:
            await interaction.followup.send("too late")
        except discord.HTTPException as exc:
            seen["late_error"] = exc

    @bot.event
    async def on_message(message: discord.Message):
        seen.setdefault("messages", []).append(message)

    async def setup_hook():
        bot.add_view(Persistent(seen))  # inside the loop: a View built without one never dispatches
        await bot.tree.sync(guild=guild)

    bot.setup_hook = setup_hook
    return bot


def replies_to(fake: FakeDiscord, interaction: dict) -> list[dict]:
    return [m for m in fake.messages(fake.channel_id)
            if m.get("interaction_metadata", {}).get("id") == interaction["id"]]


@pytest.fixture(scope="module")
def world():
    seen: dict = {}
    with FakeDiscord() as fake, fake.patch_discord_py():
        bot = ClientThread(lambda: make_bot(fake, seen), fake.bot_token).start()
        try:
            yield fake, bot, seen
        finally:
            GATE.set()
            bot.stop()
    assert not bot.errors, [r.getMessage() for r in bot.errors]
    assert not fake.server_errors, fake.server_errors


def test_login_gateway_and_sync(world):
    fake, bot, _ = world
    fake.wait_ready()
    assert [r.path for r in fake.requests[:2]] == ["/users/@me", "/oauth2/applications/@me"]
    sync = fake.requests_to("PUT", r"^/applications/1000/guilds/2000/commands$")
    assert sync and {c["name"] for c in sync[0].json} == {"ping", "echo", "late"}
    assert fake.gateway_connections[0] == {"v": "10", "encoding": "json", "compress": "zlib-stream"}
    identify = next(p for p in fake.gateway_received if p["op"] == 2)
    assert identify["d"]["token"] == "test-token" and identify["d"]["intents"] == discord.Intents.default().value
    assert [e["t"] for e in fake.gateway_events_sent if e["op"] == 0][:2] == ["READY", "GUILD_CREATE"]
    client = bot.client
    assert client.user.id == fake.bot_user_id and client.application_id == fake.application_id
    assert client.get_channel(fake.channel_id).name == "general"
    assert client.get_guild(fake.guild_id).me is not None


def test_deferred_slash_command_followup_and_edit(world):
    fake, _, _ = world
    interaction = fake.slash_command("ping", {})
    token = interaction["token"]
    fake.wait_for(lambda: fake.requests_to("PATCH", rf"/webhooks/1000/{token}/messages/@original"), what="the edit")
    [callback] = fake.interaction_responses(interaction["id"])
    assert callback["type"] == 5 and callback["status"] == 200
    assert fake.requests_to("POST", r"/callback$")[-1].query == {"with_response": "1"}
    assert fake.requests_to("POST", rf"^/webhooks/1000/{token}$")[0].query["wait"] == "1"
    # Discord: the first followup after a deferral edits the "thinking" message instead of posting a new one
    [reply] = replies_to(fake, interaction)
    assert reply["content"] == "pong (edited)" and reply["author"]["bot"] and reply["flags"] == 0
    assert fake.history_of(fake.channel_id, reply["id"]) == ["", "pong", "pong (edited)"]


def test_slash_command_options_and_ephemeral_reply(world):
    fake, _, seen = world
    interaction = fake.slash_command("echo", {"text": "hi <@4002>", "times": 2, "loud": False}, user_id=4002)
    fake.wait_for(lambda: fake.interaction_responses(interaction["id"]))
    assert seen["echo"] == ("hi <@4002>", 2, False, 4002)
    [reply] = replies_to(fake, interaction)
    assert reply["content"] == "hi <@4002>hi <@4002>" and reply["flags"] == 64 and reply["mentions"] == []
    assert reply["allowed_mentions"] == {"parse": []}
    with pytest.raises(AssertionError, match="never registered"):
        fake.slash_command("nope", {})


def test_message_content_needs_a_mention_without_the_intent(world):
    fake, _, seen = world
    plain = fake.user_message(fake.channel_id, 4001, "no mention here")
    mention = fake.user_message(fake.channel_id, 4001, "hello bot", mentions_bot=True)
    got = lambda mid: next((m for m in seen.get("messages", []) if m.id == int(mid)), None)  # noqa: E731
    fake.wait_for(lambda: got(mention["id"]), what="on_message for the mention")
    assert got(plain["id"]).content == ""  # Intents.default() has no message_content
    message = got(mention["id"])
    assert message.content == f"<@{fake.bot_user_id}> hello bot" and message.guild.id == fake.guild_id
    assert message.author.id == 4001 and [u.id for u in message.mentions] == [fake.bot_user_id]


def test_persistent_view_survives_a_restart(world):
    fake, _, seen = world
    # a message with the button, posted by an earlier run of the bot
    body = {"content": "menu", "components": [{"type": 1, "components": [
        {"type": 2, "style": 1, "label": "Again", "custom_id": "xwin:again"}]}]}
    request = urllib.request.Request(f"{fake.api_base}/channels/{fake.channel_id}/messages", method="POST",
                                     data=json.dumps(body).encode(), headers={
                                         "Authorization": "Bot test-token", "Content-Type": "application/json"})
    menu = json.load(urllib.request.urlopen(request))
    interaction = fake.click("xwin:again", menu["id"], fake.channel_id, user_id=4002)
    fake.wait_for(lambda: fake.interaction_responses(interaction["id"]))
    assert seen["clicks"] == [(4002, int(menu["id"]))]
    assert fake.interaction_responses(interaction["id"])[0]["data"]["content"] == "clicked"


def test_rate_limited_request_is_retried_after_the_wait(world):
    fake, bot, _ = world
    fake.rate_limit("POST", rf"^/channels/{fake.channel_id}/messages$", retry_after=0.6)
    sent = bot.call(lambda: bot.client.get_channel(fake.channel_id).send("after the 429"))
    limited, retried = fake.requests_to("POST", rf"^/channels/{fake.channel_id}/messages$")[-2:]
    assert (limited.status, retried.status) == (429, 200)
    assert retried.at - limited.at >= 0.6
    assert fake.messages(fake.channel_id)[-1]["id"] == str(sent.id)


def test_expired_interaction_token(world):
    fake, _, seen = world
    interaction = fake.slash_command("late", {})
    fake.wait_for(lambda: fake.interaction_responses(interaction["id"]))
    fake.expire_interaction(interaction["token"])
    GATE.set()
    fake.wait_for(lambda: "late_error" in seen, what="the followup to fail")
    error = seen["late_error"]
    assert isinstance(error, discord.HTTPException) and (error.status, error.code) == (401, 50027)


def test_threads_history_uploads_and_limits(world):
    fake, bot, seen = world
    start = fake.user_message(fake.channel_id, 4001, "start a thread", mentions_bot=True)

    async def thread_and_history():
        channel = bot.client.get_channel(fake.channel_id)
        thread = await (await channel.fetch_message(int(start["id"]))).create_thread(name="chat")
        await thread.send("in the thread", file=discord.File(io.BytesIO(b"long answer"), "answer.txt"))
        newest = [m.content async for m in channel.history(limit=2)]
        try:
            await thread.send("x" * 2001)
        except discord.HTTPException as exc:
            return thread.id, newest, exc.code

    thread_id, newest, code = bot.call(thread_and_history)
    assert thread_id == int(start["id"]) and code == 50035
    assert newest[0].endswith("start a thread")
    [thread] = fake.threads()
    assert thread["type"] == 11 and thread["parent_id"] == str(fake.channel_id)
    [posted] = fake.messages(thread_id)
    assert posted["attachments"][0]["filename"] == "answer.txt"
    assert fake.attachment(posted["id"], "answer.txt") == b"long answer"
    reply = fake.user_message(thread_id, 4002, "follow-up", mentions_bot=True)
    fake.wait_for(lambda: any(m.id == int(reply["id"]) for m in seen["messages"]))
    message = next(m for m in seen["messages"] if m.id == int(reply["id"]))
    assert isinstance(message.channel, discord.Thread)  # THREAD_CREATE put it in the client's cache


def test_gateway_resume_after_reconnect(world):
    fake, bot, seen = world
    before = len(fake.gateway_connections)
    fake.send_reconnect()
    fake.wait_for(lambda: fake.resumed_count == 1, what="RESUMED")
    assert len(fake.gateway_connections) == before + 1
    assert any(p["op"] == 6 for p in fake.gateway_received)
    after = fake.user_message(fake.channel_id, 4001, "still there?", mentions_bot=True)
    fake.wait_for(lambda: any(m.id == int(after["id"]) for m in seen["messages"]))
    assert fake.ready_count == 1 and bot.client.is_ready()


def test_unknown_route_is_a_recorded_404(world):
    fake, _, _ = world
    request = urllib.request.Request(f"{fake.api_base}/nowhere", headers={"Authorization": "Bot test-token"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request)
    assert info.value.code == 404 and json.load(info.value) == {"message": "404: Not Found", "code": 0}
    assert fake.requests[-1].path == "/nowhere" and fake.requests[-1].status == 404
    assert time.time() - fake.requests[-1].at < 5
