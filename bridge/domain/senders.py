"""Which source addresses an account may send from, and whose a reply's address is (pure).

An operator assigns addresses to an account (`senders`): numbers ("+447700900123", "106900"),
alphanumeric ids ("ACME"), and extension ranges: a number followed by "*" covers that number with
any digits appended, up to 20 in all. Chinese 106 channels work so: each customer (or each of its
sign names) gets the channel number plus an extension code, and a reply to that longer number finds
its way back to the customer.

Why it matters: without it any tenant may send as another's brand, and replies (opt-outs among
them) to a tenant's dedicated number are attributed by history alone, so a second tenant writing
to the same person from that number would receive them. With it, a tenant sends only from its
own addresses, and a reply to an address one tenant holds goes to that tenant.

An address somebody holds is its holders' alone, whatever the others' lists. An account with no
list may send from any address nobody holds (as Kannel and Jasmin users expect by default) unless
the operator sets `rules.sender_policy: assigned`, which then leaves it the SMSC's default source
only. Sending with no sender (the SMSC's default) is always allowed: that address is shared, and
only an exact assignment claims the replies to it (bridge/pipeline/inbound.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

MAX_ENTRIES = 100
# Alphanumeric ids may hold inner blanks ("MY SHOP"), not outer ones (" ACME" would be an id of
# its own, and the customer's sends as ACME refused while the list looked right).
_ENTRY = re.compile(
    r"\+?[0-9]{1,20}\*?|[A-Za-z0-9._-](?:[A-Za-z0-9 ._-]{0,9}[A-Za-z0-9._-])?", re.ASCII
)
EXACT = 1_000  # an exact claim outranks any extension range

# A waiting message's id: the store's (str), or SQLite's rowid (int) in its chunked walks.
Id = TypeVar("Id", str, int)


class SenderError(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _key(address: str) -> str:
    """Numbers compare by their digits ("+4477..." is "4477..."); alphanumeric ids regardless of
    case, as handsets and carriers do not keep it reliably."""
    digits = address[1:] if address.startswith("+") else address
    return digits if digits.isdigit() else address.casefold()


def parse_entries(value: object) -> tuple[str, ...]:
    """An operator's list, checked: SenderError naming the bad entry. Order kept, repeats
    dropped (the order matters: see extension_base)."""
    if not isinstance(value, list | tuple):
        raise SenderError("senders: expected a list of addresses")
    if len(value) > MAX_ENTRIES:
        raise SenderError(f"senders: at most {MAX_ENTRIES} entries")
    out: dict[str, str] = {}
    for i, entry in enumerate(value):
        if not isinstance(entry, str) or not _ENTRY.fullmatch(entry):
            raise SenderError(
                f"senders[{i}]: a number (up to 20 digits, optionally followed by * for an "
                "extension range) or up to 11 letters/digits, no blank at either end"
            )
        if entry.startswith("00"):
            # "0044..." is "+44..." written for dialling, but a leading 00 cannot be read so in
            # general (0011 is Australia's prefix): the same number would count as another.
            raise SenderError(f"senders[{i}]: write an international number with +, not 00")
        out.setdefault(_key(entry.rstrip("*")) + ("*" if entry.endswith("*") else ""), entry)
    return tuple(out.values())


def claim_rank(entries: Sequence[str], address: str) -> int | None:
    """How firmly `entries` hold `address`: EXACT for the address itself, the base's length for
    an extension range it falls in, None when they do not hold it."""
    key = _key(address)
    best: int | None = None
    for entry in entries:
        if entry.endswith("*"):
            base = _key(entry[:-1])
            if key.isdigit() and key.startswith(base) and len(key) <= 20:
                best = max(best or 0, len(base))
        elif _key(entry) == key:
            return EXACT
    return best


def may_send(
    account: str,
    entries: Sequence[str],
    sender: str | None,
    others: Iterable[tuple[str, Sequence[str]]],
    *,
    assigned_only: bool,
) -> bool:
    """Whether `account`, with these `entries`, may send from `sender` (None: the SMSC default),
    given the `others`' assignments: an address somebody holds is its holders' alone (the
    firmest: a customer's exact 10690012 inside a reseller's 106900*), or the replies to the
    message, opt-outs among them, would go to another tenant; an address nobody holds is free
    to an account without a list, unless `assigned_only`."""
    if sender is None:
        return True
    holders = owners([*((a, e) for a, e in others if a != account), (account, entries)], sender)
    if holders:
        return account in holders
    return not entries and not assigned_only


def refused_waiting(
    waiting: Iterable[tuple[Id, str, str | None]],
    assignments: Sequence[tuple[str, Sequence[str]]],
    *,
    assigned_only: bool,
) -> list[Id]:
    """The ids of waiting messages, (id, account, sender), whose account may no longer send
    from their sender under these assignments: an operator moved the address to another
    account, or took it from this one. Checked only at acceptance, a scheduled campaign went
    out from an address another tenant held by then, whose replies (opt-outs among them) were
    that tenant's. Decided once per (account, sender): each decision reads every list (~20 µs
    with 20 accounts holding three entries each), and a queue holds many messages of few."""
    lists = {a: tuple(e) for a, e in assignments}
    allowed: dict[tuple[str, str | None], bool] = {}
    refused: list[Id] = []
    for mid, account, sender in waiting:
        ok = allowed.get((account, sender)) if sender is not None else True
        if ok is None:
            ok = allowed[(account, sender)] = may_send(
                account, lists.get(account, ()), sender, assignments, assigned_only=assigned_only
            )
        if not ok:
            refused.append(mid)
    return refused


def owners(assignments: Iterable[tuple[str, Sequence[str]]], address: str) -> tuple[str, ...]:
    """The accounts holding `address` most firmly (a reply's destination): one in the usual case;
    several when an operator gave the same address to more than one (history decides among them);
    none when nobody holds it."""
    best = 0
    found: list[str] = []
    for account, entries in assignments:
        rank = claim_rank(entries, address)
        if rank is None or rank < best:
            continue
        if rank > best:
            best, found = rank, []
        found.append(account)
    return tuple(found)


def reply_holders(
    assignments: Iterable[tuple[str, Sequence[str]]], destination: str, *, default: bool
) -> tuple[str, ...]:
    """The accounts a reply to `destination` is held by (owners), `default` when that address
    is its SMSC's default source: that one is shared by every send without a sender, so a range
    that happens to cover it must not take the replies to all of them (opt-outs among them);
    only an exact assignment of it does. The inbound attribution and an erasure's drop of the
    waiting parts of long replies both ask this, so the two can never disagree."""
    if default:
        assignments = [(a, tuple(e for e in ent if not e.endswith("*"))) for a, ent in assignments]
    return owners(assignments, destination)


def is_default_source(default_source: str | None, address: str) -> bool:
    """Whether `address` (a reply's destination) is an SMSC's `default_source`, compared by
    digits as the SMSC may give it with or without its "+"."""
    return default_source is not None and default_source.lstrip("+") == address.lstrip("+")


def held_alone(
    account: str,
    assignments: Sequence[tuple[str, Sequence[str]]],
    addresses: Iterable[tuple[str, str]],
    default_sources: Mapping[str, str],
) -> list[tuple[str, str]]:
    """The (SMSC, destination) pairs among `addresses` whose replies are `account`'s by
    assignment alone: it is their only holder (reply_holders; `default_sources`, SMSC name to
    its default_source), so a reply to one is the account's whoever wrote to the person. An
    erasure drops the waiting parts of long replies to them even when the account never wrote
    to the number from there. Where several accounts hold an address, history decides among
    them, as for an address nobody holds."""
    if not any(a == account for a, _ in assignments):
        return []
    return [
        (smsc, dest)
        for smsc, dest in dict.fromkeys(addresses)
        if reply_holders(
            assignments, dest, default=is_default_source(default_sources.get(smsc), dest)
        )
        == (account,)
    ]


def extension_base(entries: Sequence[str]) -> str | None:
    """The account's extension range base, when it has exactly one: the Alibaba-compatible API
    appends SmsUpExtendCode to it. With none or several, the code has nothing (or no one thing)
    to extend and is not used."""
    bases = [e[:-1] for e in entries if e.endswith("*")]
    return bases[0] if len(bases) == 1 else None


def extended_sender(entries: Sequence[str], code: str | None) -> str | None:
    """The source address of an Alibaba-compatible send: the extension base plus the code;
    None (the SMSC default) for an account without exactly one base. SenderError when the two
    together pass 20 digits."""
    base = extension_base(entries)
    if base is None:
        return None
    sender = base + (code or "")
    if len(sender.lstrip("+")) > 20:
        raise SenderError(
            f"the extension code makes the sender {len(sender.lstrip('+'))} digits long; "
            "at most 20 (the account's base number plus the code)"
        )
    return sender
