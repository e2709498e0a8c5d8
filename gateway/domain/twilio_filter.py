"""Twilio's own opt-out filtering, as a model: does Twilio block a number on a sender now, and what
does Twilio do with the next text from it.

Pure. Each sender (a number, or a Messaging Service) declares in the programs file how opt-outs are
handled at Twilio (`opt_out_handling`):

* `twilio_default`: Twilio's default filtering of long codes and toll-free numbers. A text that is
  exactly one of Twilio's opt-out words blocks the sender for that number, and Twilio answers it
  itself; an opt-in word from a blocked number lifts the block (Twilio answers "re-subscribed");
  HELP/INFO gets Twilio's own help answer.
* `twilio_advanced`: Advanced Opt-Out on a Messaging Service: the same, with the keywords configured
  there (which may include a program's join keywords as opt-in words). STOP, START and HELP cannot be
  removed at Twilio, so they are always there.
* `none`: Twilio filters nothing (a standalone short code, phone-number redaction): the gateway's
  replies are the only ones, and nothing blocks at Twilio.

While Twilio blocks a (number, sender) pair it refuses every message from that sender to that number
with error 21610, the replies to the number's own texts included. The gateway must not send what
Twilio must refuse: `blocked_after` says whether a reply to this text can be carried.

Matching, as Twilio documents it: the whole body is one keyword, any case; surrounding spaces are
ignored. "STOP PLEASE" does not block at Twilio (our keyword packs still read it as an opt-out).
Twilio does not document trailing punctuation; we treat "STOP." as not a Twilio keyword, so a
reply the gateway believes can be carried might, rarely, be refused. That refusal is then recorded
as Twilio's block (gateway/services/carrier.py), not as an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class OptOutHandling(StrEnum):
    TWILIO_DEFAULT = "twilio_default"
    TWILIO_ADVANCED = "twilio_advanced"
    NONE = "none"


class Reaction(StrEnum):
    """What Twilio does on its side with one inbound text."""

    NONE = "none"  # nothing: the text is only forwarded to our webhook
    BLOCK = "block"  # an opt-out word: the sender is blocked for this number, Twilio confirms it
    UNBLOCK = "unblock"  # an opt-in word from a blocked number: the block is lifted, "re-subscribed"
    HELP = "help"  # HELP/INFO: Twilio answers with its help text


# Twilio's default keyword lists (long codes and toll-free numbers, since 2025 with REVOKE and OPTOUT).
DEFAULT_OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
DEFAULT_OPT_IN = frozenset({"START", "YES", "UNSTOP"})
DEFAULT_HELP = frozenset({"HELP", "INFO"})
# What Advanced Opt-Out cannot remove.
REQUIRED_ADVANCED = {"opt_out": "STOP", "opt_in": "START", "help": "HELP"}

# Twilio's default replies on a long code (what the person sees on their phone).
TWILIO_REPLIES = {
    Reaction.BLOCK: "You have successfully been unsubscribed. You will not receive any more messages from this "
                    "number. Reply START to resubscribe.",
    Reaction.UNBLOCK: "You have successfully been re-subscribed to messages from this number. Reply HELP for "
                      "help. Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
    # Twilio does not publish its default HELP wording; people report this text.
    Reaction.HELP: "Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
}

# Advanced Opt-Out's OptOutType field (on the webhook) -> what Twilio did.
_OPT_OUT_TYPES = {"STOP": Reaction.BLOCK, "START": Reaction.UNBLOCK, "HELP": Reaction.HELP}


def keyword_of(body: str) -> str | None:
    """The single word Twilio would match in `body` (upper case), or None for anything longer."""
    word = body.strip().upper()
    return word if word and not any(char.isspace() for char in word) else None


@dataclass(frozen=True)
class Filtering:
    """A sender's opt-out handling at Twilio, and the keywords it acts on."""

    handling: OptOutHandling = OptOutHandling.TWILIO_DEFAULT
    opt_out: frozenset[str] = DEFAULT_OPT_OUT
    opt_in: frozenset[str] = DEFAULT_OPT_IN
    help: frozenset[str] = DEFAULT_HELP

    @classmethod
    def of(cls, handling: str, opt_out: Iterable[str] = (), opt_in: Iterable[str] = (),
           help: Iterable[str] = ()) -> Filtering:
        """From a program's declaration; the keyword lists count only for twilio_advanced (empty: Twilio's
        defaults). Raise ValueError for an unknown handling."""
        mode = OptOutHandling(handling)
        if mode is not OptOutHandling.TWILIO_ADVANCED:
            return cls(mode)
        words = {"opt_out": (opt_out, DEFAULT_OPT_OUT), "opt_in": (opt_in, DEFAULT_OPT_IN),
                 "help": (help, DEFAULT_HELP)}
        lists = {name: frozenset(w.upper() for w in given) | {REQUIRED_ADVANCED[name]} if given else default
                 for name, (given, default) in words.items()}
        return cls(mode, **lists)

    @property
    def filters(self) -> bool:
        return self.handling is not OptOutHandling.NONE

    def reaction(self, body: str, blocked: bool, opt_out_type: str | None = None) -> Reaction:
        """What Twilio does with `body` from a number it blocks (`blocked`) or not.

        `opt_out_type` is Advanced Opt-Out's own word on what it did (the webhook's OptOutType): when
        given it is the truth, whatever our copy of the keyword lists says.
        """
        if not self.filters:
            return Reaction.NONE
        if opt_out_type in _OPT_OUT_TYPES:
            told = _OPT_OUT_TYPES[opt_out_type]
            return Reaction.NONE if told is Reaction.UNBLOCK and not blocked else told
        word = keyword_of(body)
        if word is None:
            return Reaction.NONE
        if word in self.opt_out:
            return Reaction.BLOCK
        if word in self.opt_in:
            return Reaction.UNBLOCK if blocked else Reaction.NONE
        if word in self.help:
            return Reaction.HELP
        return Reaction.NONE


@dataclass(frozen=True)
class Outcome:
    """Twilio's handling of one inbound text on one sender."""

    reaction: Reaction
    blocked_before: bool
    blocked_after: bool

    @property
    def replies_carried(self) -> bool:
        """Whether a reply to this text (or any message) from this sender reaches the number now."""
        return not self.blocked_after

    @property
    def twilio_replied(self) -> bool:
        """Twilio answered this text itself (its STOP, START or HELP answer)."""
        return self.reaction is not Reaction.NONE


def handle(filtering: Filtering, body: str, blocked: bool, opt_out_type: str | None = None) -> Outcome:
    """What Twilio does with one text from a number it blocks (`blocked`) on this sender, or not."""
    reaction = filtering.reaction(body, blocked, opt_out_type)
    after = {Reaction.BLOCK: True, Reaction.UNBLOCK: False}.get(reaction, blocked and filtering.filters)
    return Outcome(reaction, blocked and filtering.filters, after)


# The block state is kept on the number as the senders Twilio blocks it on, space-separated and
# sorted (one column: read with the number, written with its consent change, no extra round trip).

def blocked_senders(stored: str | None) -> frozenset[str]:
    return frozenset((stored or "").split())


def stored_blocks(senders: Iterable[str]) -> str:
    return " ".join(sorted(set(senders)))


def with_block(stored: str | None, scope: Iterable[str], blocked: bool) -> str:
    """The stored block list after the senders in `scope` (a number, and its Messaging Service: Twilio
    blocks the whole service) become blocked or not."""
    current = blocked_senders(stored)
    return stored_blocks(current | set(scope) if blocked else current - set(scope))


def is_blocked(stored: str | None, scope: Iterable[str]) -> bool:
    """Twilio blocks the number on any sender of `scope` (a block on the service covers its numbers)."""
    current = blocked_senders(stored)
    return any(sender in current for sender in scope)


__all__ = ["DEFAULT_HELP", "DEFAULT_OPT_IN", "DEFAULT_OPT_OUT", "Filtering", "OptOutHandling", "Outcome",
           "Reaction", "TWILIO_REPLIES", "blocked_senders", "handle", "is_blocked", "keyword_of",
           "stored_blocks", "with_block"]
