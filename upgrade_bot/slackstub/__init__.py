"""A faithful local Slack for the demo and the tests: Web API, Socket Mode, signed HTTP requests.

The real slack-bolt app and real slack_sdk clients talk to it as they would to Slack::

    async with SlackStub(channels={"C0UPGRADES": "upgrades"}) as stub:
        client = AsyncWebClient(token=stub.workspace.bot_token, base_url=stub.api_url)
        app = AsyncApp(client=client)                        # bolt uses this client throughout
        handler = AsyncSocketModeHandler(app, stub.workspace.app_token)   # → apps.connections.open
        await handler.connect_async()
        ack = await stub.users.run_command("U0ALICE001", "C0UPGRADES", "3.8.1")

Modules: :mod:`.workspace` (identities, tokens, channels, users), :mod:`.store` (messages,
threads, reactions, files), :mod:`.blocks` (Block Kit validation), :mod:`.webapi` (the methods),
:mod:`.socketmode` (envelopes and acks), :mod:`.response_urls`, :mod:`.recorder` (the record and
faults), :mod:`.users` (what people send), :mod:`.signing` (signed HTTP requests),
:mod:`.transcript`, :mod:`.server` (all of it on one loopback port).
"""

from .recorder import Call
from .server import SlackStub
from .signing import HttpDelivery, SignedSender, sign, url_verification
from .socketmode import AckTimeout, Delivery, NotConnected
from .transcript import transcript
from .users import Users, buttons
from .workspace import Workspace

__all__ = [
    "AckTimeout",
    "Call",
    "Delivery",
    "HttpDelivery",
    "NotConnected",
    "SignedSender",
    "SlackStub",
    "Users",
    "Workspace",
    "buttons",
    "sign",
    "transcript",
    "url_verification",
]
