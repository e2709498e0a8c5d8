"""The embedded broker: kombu's filesystem transport, with each message written whole before it shows.

kombu's own `_put` creates `<time>_<uuid>.<queue>.msg` and then writes into it, so a worker polling the
folder can pick up the file while it is still empty, fail to decode it and stop ("Unrecoverable
error"), which we saw under load. Here the message is written under a name the reader ignores and
renamed into place: a rename within one folder is atomic, so a reader sees all of it or nothing.
"""

from __future__ import annotations

import os
import uuid

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

SCHEME = "smsgate-filesystem"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(filesystem.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f"writing-{uuid.uuid4()}.partial")  # not "<queue>.msg"
        try:
            # os-level calls: no buffered file object to build for one write (the join keyword's
            # confirmation text is published on the webhook's path).
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                data = memoryview(str_to_bytes(dumps(payload)))
                while data:
                    data = data[os.write(descriptor, data):]
            finally:
                os.close(descriptor)
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


# kombu picks a transport by the broker URL's scheme.
TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
