"""Inbound deliver_sm: delivery receipts and MO messages.

The connector awaits `on_deliver` before it answers deliver_sm_resp, and this returns only after the
receipt or MO is committed: a crash in between makes the SMSC resend it instead of losing it.
Receipts are applied in batches (one transaction for many), matched by (SMSC, normalised id).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from functools import partial
from typing import Any

from bridge import logs
from bridge.aio import KeyedLocks
from bridge.assignments import TTL_S, Assignments
from bridge.config import SmscConfig
from bridge.domain import phone, senders
from bridge.domain.mo_sets import PartContent
from bridge.domain.optout import DEFAULT_KEYWORDS, is_optout
from bridge.fastinit import maker
from bridge.metrics import Metrics
from bridge.pipeline.batcher import Batcher
from bridge.pipeline.dispatcher import msgid_rule
from bridge.smpp import constants as C
from bridge.smpp.codec import ReceiptFields, ShortMessage, tlv_get, tlv_int_value
from bridge.smpp.msgid import IdBase, MsgIdRule, normalize_id
from bridge.smpp.protocol import DeliverAnswer
from bridge.smpp.reassembly import Decoded, Segment, decode_segments, parse_segment
from bridge.smpp.receipt import (
    LATIN1_OUTCOME_RE,
    MESSAGE_STATE_STAT,
    STAT_STATES,
    ReceiptState,
    network_error,
    parse_done_date,
    receipt_outcome,
)
from bridge.smpp.session import ReceiptReceived
from bridge.store.base import Store, is_unavailable
from bridge.store.models import MoMessage, MoPart, ReceiptIn

log = logging.getLogger("bridge.inbound")
_RECEIPTED_MESSAGE_ID = C.RECEIPTED_MESSAGE_ID
_MESSAGE_STATE = C.MESSAGE_STATE
_NETWORK_ERROR_CODE = C.NETWORK_ERROR_CODE
_MESSAGE_PAYLOAD = C.MESSAGE_PAYLOAD
_MSG_TYPE_MASK = C.ESM_MSG_TYPE_MASK
_INTERMEDIATE = C.ESM_INTERMEDIATE_NOTIFICATION
_RECEIPT_TYPES = (0x04, 0x08, 0x10, 0x20)  # is_receipt's
# Read once (an enum member read off its class is ~900 instructions on Python 3.11).
_STR, _UNKNOWN, _ENROUTE = IdBase.STR, ReceiptState.UNKNOWN, ReceiptState.ENROUTE
# The text is latin-1 decoded octets: the pattern made for those (session 63, receipt.py).
_standard_outcome = LATIN1_OUTCOME_RE.fullmatch
_store_down = logs.Throttled(log)
# One a receipt (a part sent): fastinit.maker's function, the same frozen value without the
# class call's way back into the interpreter (~1.5 k instructions, session 58).
_receipt_in = maker(ReceiptIn)
# What a receipt is queued with beside its ReceiptIn (`_receipt_read`): its answer, SMSC, key,
# state, stat and err, read by `_receipts_committed` or `_receipts_failed`.
_Told = tuple[DeliverAnswer, str, str, str, str, str | None]

# Most groups of stale MO parts one sweep delivers (each is a few store round trips): a backlog
# is worked off over a few 5-second rounds instead of holding up the sweeper's other steps.
STALE_MO_BATCH = 200

# Between the text of runs of parts separated by a missing part.
GAP = " ... "


def is_receipt(body: ShortMessage) -> bool:
    # SMPP 3.4 5.2.12: message type bits 2-5; 0x04 is an SMSC delivery receipt. Some SMSCs only
    # set the receipted_message_id TLV, so that marks a receipt too.
    return (body.esm_class & 0x3C) in (0x04, 0x08, 0x10, 0x20) or (
        tlv_get(body.tlvs, C.RECEIPTED_MESSAGE_ID) is not None
    )


class Inbound:
    def __init__(
        self,
        store: Store,
        smscs: Mapping[str, SmscConfig],
        *,
        clock: Callable[[], float] = time.time,
        batch_delay_s: float = 0.002,
        metrics: Metrics | None = None,
        assignments: Assignments | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        # `log.isEnabledFor(DEBUG)` read once a receipts' flush, for each receipt it settles
        # (`_receipts_committed`: a Python call a receipt until session 61).
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._rules = {name: msgid_rule(cfg) for name, cfg in smscs.items()}
        self._keys = _key_rules(self._rules)
        self._smscs = dict(smscs)
        # The last receipt's done date and its milliseconds (_receipt).
        self._done_date: datetime | None = None
        self._done_at: int | None = None
        self._receipts: Batcher[ReceiptIn] = Batcher(
            self._flush_receipts,
            max_items=1000,
            max_delay_s=batch_delay_s,
            name="receipts",
            # The first final receipt of a long message stands (one_per_message): where the
            # store could commit two batches out of order, one at a time. Not on SQLite, which
            # commits them in order anyway: there it cost receipt p99 (3-part, 143 against 121
            # ms), each batch waiting for the one before it to be synced.
            ordered=not getattr(store, "commits_in_order", False),
            # A committed batch's receipts answered in one call (`_receipts_committed`), not
            # a call of each receipt's `partial` (session 62); a failed one's refused in one
            # (`_receipts_failed`): each receipt is queued with a tuple of its answer and
            # arguments, not a `partial` (session 64).
            committed=self._receipts_committed,
            failed=self._receipts_failed,
        )
        self.receipts = 0
        self.matched = 0
        self.unmatched = 0
        self.unparsable = 0
        self.mo = 0
        self.mo_incomplete = 0  # long MOs delivered without the parts that never came
        # MOs whose UDH named a national language table we lack (decoded with the default one)
        self.mo_unknown_language = 0
        # MOs whose octets are not text in their data_coding (kept as hex)
        self.mo_undecodable = 0
        self.optouts = 0
        self._mo_order = KeyedLocks()
        # Replies that put the sender on the account's opt-out list (rules.optout_keywords).
        self.optout_keywords: tuple[str, ...] = DEFAULT_KEYWORDS
        # The accounts' assigned senders, cached (replies come in storms, accounts seldom
        # change).
        self.assignments = assignments or Assignments(store, clock=clock)
        # Called when a batch of receipts queued status webhooks, or an MO was stored for an
        # account (the owner's sender, woken: it would otherwise find them at its next poll,
        # ~100 ms later on average).
        self.on_reports: Callable[[], None] | None = None

    def reconfigure(self, smscs: Mapping[str, SmscConfig]) -> None:
        self._rules = {name: msgid_rule(cfg) for name, cfg in smscs.items()}
        self._keys = _key_rules(self._rules)
        self._smscs = dict(smscs)

    def on_deliver(self, smsc: str, body: ShortMessage) -> Awaitable[int]:
        """The deliver_sm_resp status, once the receipt or MO is committed.

        A receipt gets a `DeliverAnswer`, not a coroutine: one comes per segment sent, and a task
        per receipt (the bind's, with a coroutine chain five frames deep) cost ~14 µs of the
        owner's CPU each, measured; the answer is set from its batch's commit."""
        # is_receipt inline (a call a receipt, one per part sent).
        if not (
            (body.esm_class & 0x3C) in _RECEIPT_TYPES
            or tlv_get(body.tlvs, _RECEIPTED_MESSAGE_ID) is not None
        ):
            return self._mo_guarded(smsc, body)
        # Not a future: the bind answers the deliver_sm inside `set_result`, called from the
        # batch's flush (protocol.DeliverAnswer, session 58).
        out = DeliverAnswer()
        try:
            self._receipt(smsc, body, out)
        except Exception as exc:
            self._not_stored(smsc, exc)
            out.set_result(C.ESME_RX_T_APPN)
        return out

    async def _mo_guarded(self, smsc: str, body: ShortMessage) -> int:
        try:
            return await self._mo(smsc, body)
        except Exception as exc:
            self._not_stored(smsc, exc)
            return C.ESME_RX_T_APPN

    def _not_stored(self, smsc: str, exc: BaseException) -> None:
        if is_unavailable(exc):  # the store is down: the SMSC redelivers, one line a while
            _store_down.error(f"could not store deliver_sm from smsc={smsc}; redelivery", exc)
        else:
            log.error("could not store deliver_sm from smsc=%s; redelivery", smsc, exc_info=exc)

    def on_receipt(self, smsc: str, ev: ReceiptReceived) -> DeliverAnswer:
        """`on_deliver` for a deliver_sm marked a receipt that the bind read without its
        ShortMessage (`codec.read_receipt_sm`: the esm_class, short_message and four TLVs
        `_receipt` reads; one a part sent): the same answer and the same receipt stored, without
        the deliver_sm's general decode (session 60, README note 27)."""
        out = DeliverAnswer()
        try:
            self._receipt_read(smsc, ev.fields, out)
        except Exception as exc:
            self._not_stored(smsc, exc)
            out.set_result(C.ESME_RX_T_APPN)
        return out

    def _receipt(self, smsc: str, body: ShortMessage, out: DeliverAnswer) -> None:
        # The four TLVs a receipt may carry, found in one pass (the first of a tag wins, as
        # tlv_get's): four scans of the list before, each a call. The values read_receipt_sm
        # gives a receipt the bind read itself (on_receipt).
        payload = tlv_id = state = network = None
        for tag, value in body.tlvs:
            if tag == _RECEIPTED_MESSAGE_ID:
                if tlv_id is None:
                    tlv_id = value
            elif tag == _MESSAGE_STATE:
                if state is None:
                    state = value
            elif tag == _NETWORK_ERROR_CODE:
                if network is None:
                    network = value
            elif tag == _MESSAGE_PAYLOAD and payload is None:
                payload = value
        self._receipt_read(
            smsc, (body.esm_class, body.short_message, tlv_id, state, network, payload), out
        )

    def _receipt_read(self, smsc: str, fields: ReceiptFields, out: DeliverAnswer) -> None:
        """A receipt's parse, key and batcher entry from its deliver_sm's fields (ReceiptFields:
        esm_class, short_message, the first receipted_message_id, message_state,
        network_error_code and message_payload TLVs' values or None)."""
        esm_class, short_message, tlv_id, state, network, payload = fields
        # The text may come in message_payload instead (sm_length 0). NUL octets go, wherever
        # they are: SMSCs pad with them, and PostgreSQL's text refuses them, so a receipt with
        # one inside failed to store every time and the SMSC redelivered it for ever.
        raw = short_message or payload or b""
        # Looked for first (`0 in`: no call; an int, as `b"\x00" in` tries the needle as an
        # int first and builds a TypeError each time), as most receipts carry none: replace()
        # is a method call even when it hands `raw` back (session 64).
        text = (raw.replace(b"\x00", b"") if 0 in raw else raw).decode("latin-1")
        tlv_text = (
            tlv_id.replace(b"\x00", b"").decode("latin-1").strip() if tlv_id is not None else ""
        )
        # A one-octet message_state (SMPP 3.4 5.3.2.35), as every SMSC sends it, read without
        # tlv_int_value's call.
        st = state[0] if state is not None and len(state) == 1 else tlv_int_value(state)
        m = _standard_outcome(text)
        if m is not None:
            # receipt_outcome's standard layout inline (one a part sent; session 59): its call,
            # the tuple it made and took apart, its _clean of the TLV's id (tlv_text is clean
            # already: no NUL, stripped) and its NUL check (none left in `text`), and the
            # match's four groups of eight it does not read (LATIN1_OUTCOME_RE). The same
            # values: tests/unit/test_session59_receipt_inline.py checks them against
            # receipt_values' on random and odd receipts.
            text_id, done_text, text_stat, err = m.groups()
            message_id = tlv_text or text_id
            stat = MESSAGE_STATE_STAT.get(st) or text_stat.upper()  # type: ignore[arg-type]
            rstate = STAT_STATES.get(stat, _UNKNOWN)
            done_date = parse_done_date(done_text)
            net_error = network_error(network) if network is not None else None
        else:
            # Its fields as values, not a Receipt made to be read once, and only the six stored
            # (receipt_outcome: receipt_values' without sub, dlvrd, the submit date and the
            # quoted text).
            got = receipt_outcome(text, tlv_text or None, st, network)
            if got is None:
                self.unparsable += 1
                if self.metrics is not None:
                    self.metrics.receipt(smsc, "unparsable")
                # The receipt text quotes the start of the message ("text:..."): a body.
                log.warning(
                    "receipt without a message id",
                    extra={"smsc": smsc, "receipt": logs.body(text[:120])},
                )
                out.set_result(C.ESME_ROK)  # nothing to correlate; redelivery would not help
                return
            message_id, rstate, stat, err, done_date, net_error = got
        keys = self._keys.get(smsc)
        if keys is None:
            key = message_id
        else:
            # SMPP 3.4 5.3.2.12: receipted_message_id is the id the submit_sm_resp returned, in
            # its format (unless the SMSC's tlv_id_base says otherwise); receipt_id_base is for
            # the id in the receipt's text (msgid.normalize_tlv_id, normalize_receipt_id: their
            # bases read once an SMSC, _key_rules). normalize_id's usual id inline: letters
            # and digits only, nothing to trim.
            rule, tlv_base, text_base = keys
            base = tlv_base if tlv_text else text_base
            if base is _STR and message_id.isascii() and message_id.isalnum():
                key = message_id.upper() if rule.case_insensitive else message_id
                if rule.strip_leading_zeros:
                    key = key.lstrip("0") or "0"
            else:
                key = normalize_id(message_id, base, rule)
        now_ms = int(self.clock() * 1000)
        if net_error is not None and not (err and err.strip("0")):
            err = str(net_error)
        if (esm_class & _MSG_TYPE_MASK) == _INTERMEDIATE:  # is_intermediate_notification
            # SMPP 3.4 2.11.2: one delivery attempt's outcome while the SMSC keeps trying; its
            # UNDELIV (or even DELIVRD) is not the message's. The first final state stands, so
            # taking it as one would have hidden the receipt that settles the message.
            rstate = _ENROUTE
        # The state's text (what str() gives a StrEnum member, without its call), stored and
        # queued with the receipt: its metrics' key and log field (session 64: the member was
        # queued, and hashing it for the metrics' count ran Enum's Python __hash__).
        state_text = rstate._value_
        # Told inside the batch's flush, once it committed: no future per receipt, and its
        # answer (`out`) is set one loop hop earlier (Batcher.add_call). ReceiptIn by position,
        # in its fields' order (tests/unit/test_session52_positional.py holds it): called by
        # keyword, a class gets a dict its __init__ unpacks again.
        if done_date is None:
            done_at = None
        elif done_date is self._done_date:
            # The same datetime object as the last receipt's (receipt.parse_smpp_date keeps one
            # a date text): receipts of one second share it. Its timestamp was ~2.5 k
            # instructions a receipt (session 55).
            done_at = self._done_at
        else:
            done_at = int(done_date.timestamp() * 1000)
            self._done_date, self._done_at = done_date, done_at
        self._receipts.add_call(
            _receipt_in(
                smsc,  # smsc
                key,  # smsc_msg_id
                state_text,  # state
                stat or None,  # stat
                err,  # err
                done_at,  # done_at
                now_ms,  # received_at
                text[:250],  # raw
            ),
            # Its answer and what `_receipts_committed` reads, as a tuple: a `partial` of
            # `_receipt_committed` until session 64 (~1.2 k instructions a receipt more, one a
            # part sent), read for its `args` (session 62) or called with a failed batch's
            # exception (`_receipts_failed` now).
            (out, smsc, key, state_text, stat, err),
        )

    def _receipts_committed(self, told: list[_Told]) -> None:
        """A committed batch's receipts, in order (the batcher's `committed`): each answered,
        then counted. Each receipt's tuple (what `_receipt_read` queued with it: the answer,
        SMSC, key, the state's text, stat, err) is read here; the batcher called a `partial`
        of each with None until session 62, which did this for one (a Python call a receipt,
        one a part sent), then handed over those `partial`s for their `args` until session
        64."""
        metrics = self.metrics
        debug = self._debug  # the flush's look at the level (see __init__)
        n = 0
        # The metrics' counts by (SMSC, state), told in one call after the batch's answers
        # (`Metrics.receipts_counted`): a call of `Metrics.receipt` and the state's `.value`
        # a receipt (one a part sent) before (session 63).
        tally: dict[tuple[str, str], int] = {}
        for item in told:
            try:
                out, smsc, key, state, stat, err = item
                # First: nothing below may keep the SMSC's answer back. Unless answered
                # already (settle: done() and set_result in one call).
                out.settle(C.ESME_ROK)
                n += 1
                # Counted once committed, so one refused and redelivered counts once; the
                # SMSC's resend of one whose answer it lost counts again (it was received
                # again).
                if metrics is not None:
                    k = (smsc, state)
                    tally[k] = tally.get(k, 0) + 1
                if debug:
                    log.debug(
                        "receipt received",
                        extra={"smsc": smsc, "smsc_message_id": key, "state": state,
                               "stat": stat, "err": err},
                    )  # fmt: skip
            except Exception:  # the receipts after it are answered all the same
                log.exception("receipts: a committed item's callback failed")
        self.receipts += n
        if tally and metrics is not None:
            try:
                metrics.receipts_counted(tally)
            except Exception:
                log.exception("receipts: a committed item's callback failed")

    def _receipts_failed(self, told: list[_Told], failed: BaseException) -> None:
        """A failed or cancelled batch's receipts (the batcher's `failed`, with the flush's
        exception): each refused unless answered already; the SMSC redelivers. The batcher
        logged the failed batch once; a line per receipt repeated it up to a thousand times.
        Each answer settled on its own: one that raises leaves the others refused all the
        same, as a call of each receipt's `partial` did until session 64."""
        for item in told:
            try:
                item[0].settle(C.ESME_RX_T_APPN)  # unless answered already
            except Exception:
                log.exception("receipts: a failed item's callback failed")

    async def _flush_receipts(self, items: list[ReceiptIn]) -> None:
        out = await self.store.apply_receipts(items, int(self.clock() * 1000))
        self._debug = log.isEnabledFor(logging.DEBUG)  # for the receipts settled next
        if out.reports and self.on_reports is not None:
            self.on_reports()
        self.matched += out.matched
        self.unmatched += out.pending
        if self.metrics is not None:
            self.metrics.unmatched(out.pending)
            if out.after_timeout:
                self.metrics.receipts_after_timeout(out.after_timeout)

    async def _mo(self, smsc: str, body: ShortMessage) -> int:
        now_ms = int(self.clock() * 1000)
        # An SMSC configured packed_gsm packs the GSM text it delivers as it wants it submitted:
        # read unpacked, a reply came in as garbage.
        cfg = self._smscs.get(smsc)
        seg = parse_segment(body, cfg is not None and cfg.packed_gsm)
        if seg.scheme == "sar" and (seg.ref > 0xFFFF or seg.total > 0xFF):
            # SMPP 3.4 5.3.2.22-24: a 2-octet reference, 1-octet total and seq. Larger values
            # (TLVs sent longer than defined) name no message we could complete, and the store
            # refused a reference beyond its INTEGER on every resend: read as one message, as
            # parse_segment reads an inconsistent header.
            seg = Segment(seg.data_coding, seg.payload)
        whole: bytes | None = None  # a long MO's parts joined
        parts: list[MoPart] | None = None  # its kept parts, all of them
        set_no = 0  # which of the messages kept under its reference it is (mo_sets)
        if seg.scheme:
            part = MoPart(
                smsc,
                body.source_addr,
                body.destination_addr,
                seg.ref,
                seg.total,
                seg.seq,
                body.data_coding,
                seg.payload,
                now_ms,
                body.source_addr_ton,
                locking=seg.locking,
                single=seg.single,
            )
            # One sender's parts are placed in the order they came (mo_sets.place_part reads
            # the order): deliver_sm are handled concurrently, and on PostgreSQL their
            # transactions raced, so a second message's part 3 could overtake its part 1.
            async with self._mo_order.hold((smsc, body.source_addr, body.destination_addr)):
                parts = await self.store.add_mo_part(part)
            if parts is None:
                return C.ESME_ROK  # stored; waiting for the other parts
            # Join before decoding, as a handset does: a pair cut across parts still decodes.
            whole = content(parts)
            decoded = parts_text(body.data_coding, parts)
            set_no = parts[0].set_no
        else:
            decoded = decoded_mo(seg.data_coding, ((seg.payload, seg.locking, seg.single),))
        text = decoded.text
        self._decoding_flags(smsc, body.data_coding, decoded)
        source, account, sign = await self._attribute(
            smsc, body.source_addr, body.source_addr_ton, body.destination_addr, now_ms
        )
        # Before the MO is stored: a crash in between re-delivers the MO, and adding the number
        # again is a no-op, so the opt-out is never lost.
        await self._optout_if_asked(account, source, text, now_ms)
        # The same deliver_sm resent (our deliver_sm_resp was lost, or a store error asked for
        # it again after the MO was committed) gets the same id, and the store keeps one.
        if whole is None:
            mo_id: str | None = mo_id_for(smsc, body, seg, now_ms)
            if await self.store.get_mo(
                mo_id_for(smsc, body, seg, now_ms - MO_REPEAT_MS)
            ) or await self._stored_by_octets(smsc, body, seg, text, now_ms):
                mo_id = None
        else:
            what = partial(_concat_what, str(seg.scheme), seg.ref, seg.total)
            mo_id = await self._long_mo_id(
                smsc, body.source_addr, body.destination_addr, body.data_coding, what, whole,
                text, now_ms,
            )  # fmt: skip
        if mo_id is None:
            if seg.scheme:
                await self.store.drop_mo_parts(
                    smsc, body.source_addr, body.destination_addr, seg.ref, set_no
                )
            return C.ESME_ROK  # a repeat of one stored in the window before this one
        mo = MoMessage(
            id=mo_id,
            account_id=account,
            smsc=smsc,
            source=source,
            destination=body.destination_addr,
            text=text,
            received_at=now_ms,
            sign_name=sign,
            text_hex=decoded.hex,
        )
        if parts is None:
            new = await self.store.store_mo(mo)
        else:
            # Stored, and its parts dropped, in one transaction and only while they are still
            # kept: an erasure of the number that ran since add_mo_part read them dropped them,
            # and the text it erased must not land in the inbox after it (nor the parts stay
            # for a resend to join). None: they went (erased, or this MO stored by a resend's
            # handling or the sweep): nothing is stored. A crash before leaves the parts to
            # complete again.
            new = bool(await self.store.store_mo_from_parts(mo, parts))
        if not new:
            return C.ESME_ROK  # a copy of one stored in this window: kept, pushed, counted once
        if account is not None and self.on_reports is not None:
            self.on_reports()  # its MO report, if the account has a URL (replies are few)
        self._count_mo(smsc, account)
        log.debug(
            "mo received",
            extra={"smsc": smsc, "mo_id": mo_id, "account": account,
                   "from": logs.number(source), "to": body.destination_addr,
                   "text": logs.body(text)},
        )  # fmt: skip
        return C.ESME_ROK

    def _count_mo(self, smsc: str, account: str | None) -> None:
        """A new MO stored; one for no account is counted apart: nobody is told of it (a STOP
        among them opted no one out), and its log line is DEBUG (a short code's spam)."""
        self.mo += 1
        if self.metrics is not None:
            self.metrics.mo(smsc)
            if account is None:
                self.metrics.mo_unattributed(smsc)

    def _decoding_flags(self, smsc: str, data_coding: int, decoded: Decoded) -> None:
        """Count an MO read with the default tables where its UDH named national ones we lack
        (TS 23.038 A: ids 14 and up are reserved, Spanish has no locking table), and one whose
        octets are not text in its coding (stored as hex: the customer sees what was sent, the
        operator that a sender or SMSC mislabels its coding). The text stays out of the log."""
        if decoded.unknown_language:
            self.mo_unknown_language += 1
            if self.metrics is not None:
                self.metrics.mo_unknown_language(smsc)
            log.warning(
                "mo names an unknown national language table; decoded with the default alphabet",
                extra={"smsc": smsc},
            )
        if decoded.undecodable:
            self.mo_undecodable += 1
            if self.metrics is not None:
                self.metrics.mo_undecodable(smsc)
            log.warning(
                "mo octets are not text in their data_coding; kept as hex",
                extra={"smsc": smsc, "data_coding": data_coding},
            )

    async def _optout_if_asked(
        self, account: str | None, source: str, text: str, now_ms: int
    ) -> None:
        """A whole reply that is an opt-out keyword puts the number on its account's list."""
        if account is None or not is_optout(text, self.optout_keywords):
            return
        await self.store.add_optouts(account, [source], "mo", now_ms)
        self.optouts += 1
        log.info(
            "recipient opted out by reply",
            extra={"account": account, "from": logs.number(source)},
        )

    async def _attribute(
        self, smsc: str, source_addr: str, ton: int, destination: str, now_ms: int
    ) -> tuple[str, str | None, str | None]:
        """(source as E.164 when international, account, sign name) of an MO, complete or not:
        the account that last wrote to the sender from the address the reply went to."""
        cfg = self._smscs.get(smsc)
        source = _e164(source_addr, ton, cfg.national_prefix if cfg is not None else None)
        forms, default = self._sent_from(smsc, destination)
        # An address the operator assigned to an account is that account's: a reply to it goes
        # there even if another account wrote to the same person from it (history decides only
        # among the holders, or among everyone when nobody holds the address).
        holders = await self._holders(destination, default)
        found = await self.store.attribute_mo(
            source, forms, now_ms, default=default, accounts=holders
        )
        if found is None and len(holders) == 1:
            found = (holders[0], None)
        account, sign = found if found is not None else (None, None)
        return source, account, sign

    async def _holders(self, destination: str, default: bool) -> tuple[str, ...]:
        # The SMSC's default source is shared by every send without a sender: only an
        # operator's exact assignment of it claims the replies (senders.reply_holders).
        return senders.reply_holders(await self.assignments.all(), destination, default=default)

    async def flush_stale_mo(
        self, now_ms: int, *, timeout_ms: int = 300_000, limit: int = STALE_MO_BATCH
    ) -> int:
        """Deliver the long MOs whose missing parts did not come within `timeout_ms` of the last
        one that did: what arrived, flagged incomplete (a reply cut short by the network used to
        vanish in silence). Returns how many MOs were stored now. A group that fails is logged
        and left for the next round; the others go on."""
        groups = await self.store.stale_mo_groups(now_ms - timeout_ms, limit)
        stored = 0
        for parts in groups:
            try:
                stored += await self._flush_group(parts)
            except Exception:
                p = parts[0]
                log.exception(
                    "could not deliver an incomplete mo; retried next sweep",
                    extra={"smsc": p.smsc, "from": logs.number(p.source), "ref": p.ref},
                )
        return stored

    async def _flush_group(self, parts: list[MoPart]) -> bool:
        """Store the MO these kept parts make (True when stored now). The store and the drop of
        the parts are one transaction, done only while the group is still these parts: a part
        that arrived since the read (acknowledged already) is neither dropped unseen nor, when
        it completed the message, delivered a second time as a fragment; the group is then
        left to `_mo` or to a later sweep."""
        first = parts[0]
        smsc, total = first.smsc, first.total
        seqs = tuple(p.seq for p in parts)
        newest = max(p.received_at for p in parts)
        if await self._stored_whole(parts, newest):
            # `_mo` stored this MO complete: these are its parts left by a failed drop, or
            # parts the SMSC resent after it (their resp was lost) that came alone. Delivering
            # them again, whole or as a fragment, would push the customer the reply twice.
            await self.store.store_mo_from_parts(None, parts)
            log.info(
                "dropped the kept parts of a stored mo",
                extra={"smsc": smsc, "from": logs.number(first.source), "ref": first.ref},
            )
            return False
        # TON unknown (parts kept before it was): read as SMSCs without a TON send it.
        ton = first.source_ton if first.source_ton is not None else 0
        source, account, sign = await self._attribute(
            smsc, first.source, ton, first.destination, newest
        )
        decoded = join_runs_text(parts)
        text = decoded.text
        self._decoding_flags(smsc, first.data_coding, decoded)
        if seqs == tuple(range(1, total + 1)):
            # Every part, never stored: `_mo` failed before storing it (a store error, a crash
            # after the last part was kept) and the SMSC's resend did not come in time. It is
            # the complete reply: delivered as `_mo` would have, opt-out included.
            return await self._deliver_whole(parts, newest, source, account, sign, decoded)
        # Never an opt-out, whatever the text: a fragment is not a request (the "STOP" may be
        # the start of "STOP sending me the old address"), and an opt-out ends the account's
        # queued messages to the number. The customer sees the text, flagged, and decides.
        mo_id = incomplete_mo_id(
            smsc, first.source, first.destination, first.ref, total, first.received_at
        )
        new = await self.store.store_mo_from_parts(
            MoMessage(
                id=mo_id,
                account_id=account,
                smsc=smsc,
                source=source,
                destination=first.destination,
                text=text,
                received_at=newest,
                sign_name=sign,
                parts_total=total,
                parts_received=seqs,
                text_hex=decoded.hex,
            ),
            parts,
        )
        if new:  # not when stored before, nor when the group changed since it was read
            self.mo_incomplete += 1
            if self.metrics is not None:
                self.metrics.mo_incomplete(smsc)
            log.info(
                "incomplete mo delivered: %d of %d parts",
                len(seqs),
                total,
                extra={"smsc": smsc, "mo_id": mo_id, "account": account,
                       "from": logs.number(source), "parts_received": list(seqs),
                       "parts_total": total},
            )  # fmt: skip
        return bool(new)

    async def _stored_by_octets(
        self, smsc: str, body: ShortMessage, seg: Segment, text: str, now_ms: int
    ) -> bool:
        """Whether an MO naming national language tables was stored under the id of its octets
        alone, as releases before the tables counted gave it, with this text: a copy the SMSC
        resent across the upgrade (its deliver_sm_resp lost as the old release stopped), not
        one to store and push again. The text, not the id alone: the same septets in the
        default alphabet are another reply (the reason the tables count)."""
        if not (seg.locking or seg.single):
            return False
        for at in (now_ms, now_ms - MO_REPEAT_MS):
            old = await self.store.get_mo(
                _mo_id(smsc, body.source_addr, body.destination_addr, body.data_coding,
                       bytes(seg.payload), at)
            )  # fmt: skip
            if old is not None and old.text == text:
                return True
        return False

    async def _long_mo_id(
        self,
        smsc: str,
        source: str,
        destination: str,
        data_coding: int,
        what: Callable[[bytes | None], bytes],
        whole: bytes,
        text: str,
        at: int,
    ) -> str | None:
        """The id to store a complete long MO under; None when it is stored already (a
        repeat: the same text in this window or the one before).

        By its reference first (the id `_stored_whole` finds from any of its parts). A long
        reply with other text already holds that id when the sender used the reference again
        within the window (8-bit ones come round; some senders use one for all): it is
        another reply, identified by its text too, not a repeat to drop. One whose text was
        erased since is taken for this one: an erasure must not be undone by a resend."""
        found_other = False
        for key in (None, whole):
            ids = [_mo_id(smsc, source, destination, data_coding, what(key), t)
                   for t in (at, at - MO_REPEAT_MS)]  # fmt: skip
            for mo_id in ids:
                stored = await self.store.get_mo(mo_id)
                # An erased one (text gone) counts as this one: erased text must not return.
                if stored is not None and (key is not None or stored.text in (None, text)):
                    return None
                found_other = found_other or stored is not None
            if not found_other:
                return ids[0]
        return _mo_id(smsc, source, destination, data_coding, what(whole), at)

    async def _stored_whole(self, parts: list[MoPart], newest: int) -> bool:
        """Whether `_mo` stored the MO these kept parts belong to: looked up by the ids it
        gives one (any concatenation scheme: which one the parts came by is not kept; the
        window of the newest part and the one before, as `_mo` recognises repeats). Parts of
        another reply under the same reference are not taken for it: a complete set must be
        its text, a fragment's text must be in it."""
        first = parts[0]
        complete = tuple(p.seq for p in parts) == tuple(range(1, first.total + 1))
        whole = content(parts)
        runs = join_runs(parts).split(GAP)
        for dc in dict.fromkeys(p.data_coding for p in parts):
            for scheme in ("udh8", "udh16", "sar"):
                what = partial(_concat_what, scheme, first.ref, first.total)
                if complete:
                    text = parts_text(dc, parts).text
                    if await self._long_mo_id(
                        first.smsc, first.source, first.destination, dc, what, whole, text,
                        newest,
                    ) is None:  # fmt: skip
                        return True
                    continue
                for at in (newest, newest - MO_REPEAT_MS):
                    mo_id = _mo_id(first.smsc, first.source, first.destination, dc, what(None), at)
                    mo = await self.store.get_mo(mo_id)
                    if mo is not None and (mo.text is None or all(r in mo.text for r in runs)):
                        return True
        return False

    async def _deliver_whole(
        self,
        parts: list[MoPart],
        newest: int,
        source: str,
        account: str | None,
        sign: str | None,
        decoded: Decoded,
    ) -> bool:
        first = parts[0]
        text = decoded.text
        smsc = first.smsc
        await self._optout_if_asked(account, source, text, newest)
        scheme = "udh8" if first.ref < 256 else "udh16"  # a guess: `_stored_whole` tries all
        what = partial(_concat_what, scheme, first.ref, first.total)
        whole = content(parts)
        mo_id = await self._long_mo_id(
            smsc, first.source, first.destination, parts[-1].data_coding, what, whole, text,
            newest,
        )  # fmt: skip
        if mo_id is None:  # stored meanwhile: only its parts go
            await self.store.store_mo_from_parts(None, parts)
            return False
        new = await self.store.store_mo_from_parts(
            MoMessage(
                id=mo_id,
                account_id=account,
                smsc=smsc,
                source=source,
                destination=first.destination,
                text=text,
                received_at=newest,
                sign_name=sign,
                text_hex=decoded.hex,
            ),
            parts,
        )
        if new:
            self._count_mo(smsc, account)
            log.info(
                "mo delivered by the sweep: its parts were kept, the mo never stored",
                extra={"smsc": smsc, "mo_id": mo_id, "account": account,
                       "from": logs.number(source)},
            )  # fmt: skip
        return bool(new)

    def _sent_from(self, smsc: str, destination: str) -> tuple[tuple[str, ...], bool]:
        """The forms a sender stored with our messages may have for the address a reply went
        to (a number is stored as given, "+44..." or "44...", and sent without the "+"), and
        whether that address is the SMSC's default source (messages without a sender of their
        own went out from it)."""
        digits = destination.lstrip("+")
        forms = (destination,) if not digits.isdigit() else (digits, "+" + digits)
        cfg = self._smscs.get(smsc)
        default = cfg is not None and senders.is_default_source(cfg.default_source, destination)
        return forms, default

    async def drain(self) -> None:
        await self._receipts.drain()


def _key_rules(rules: Mapping[str, MsgIdRule]) -> dict[str, tuple[MsgIdRule, IdBase, IdBase]]:
    """Each SMSC's id rule with the bases a receipt's key takes (Inbound._receipt): from its
    receipted_message_id TLV (normalize_tlv_id's) and from its text (normalize_receipt_id's)."""
    return {
        name: (r, r.receipt_base if r.tlv_as_receipt else r.resp_base, r.receipt_base)
        for name, r in rules.items()
    }


# How long the same MO from the SMSC counts as a repeat of the first: ids are derived from the
# message and its 2-minute window, and the window before is checked too, so a repeat within
# 2 to 4 minutes is recognised. SMSCs resend an unanswered deliver_sm within seconds to a minute.
# The price: a user who sends the very same text twice to the same address within that time
# is heard once.
MO_REPEAT_MS = 120_000

# How long the accounts' assigned senders are kept before they are read again (Assignments).
ASSIGNMENTS_TTL_MS = int(TTL_S * 1000)


def mo_id_for(smsc: str, body: ShortMessage, seg: Any, now_ms: int) -> str:
    """The MO's id, the same for every copy of one deliver_sm (or one set of parts) within a
    window: what identifies it (SMSC, addresses, coding, and the concatenation reference or the
    text itself) and the window, hashed. (A long MO whose reference another long reply holds in
    the window is identified by its text too: Inbound._long_mo_id.)"""
    if seg.scheme:
        what = _concat_what(str(seg.scheme), seg.ref, seg.total, None)
    else:
        what = content((seg,))
    return _mo_id(smsc, body.source_addr, body.destination_addr, body.data_coding, what, now_ms)


def content(parts: Iterable[PartContent]) -> bytes:
    """What an MO's ids take of its content: its parts' octets joined and, when a part named
    national language tables, each part's (the same septets read with other tables are another
    text: without them, a reply was dropped as a repeat of one in another language). Octets
    alone otherwise, as before the tables counted, so the ids of MOs without tables stay."""
    parts = list(parts)
    whole = b"".join(bytes(p.payload) for p in parts)
    if not any(p.locking or p.single for p in parts):
        return whole
    tables = b"".join(bytes((p.locking & 0xFF, p.single & 0xFF)) for p in parts)
    return whole + b"\x00lang:" + tables


def _concat_what(scheme: str, ref: int, total: int, whole: bytes | None) -> bytes:
    """What identifies a long MO: its reference, and (`whole`, its parts joined) its text when
    another long reply holds the id of the reference alone."""
    what = f"{scheme}:{ref}:{total}".encode()
    return what if whole is None else what + b"\x00" + whole


def _mo_id(
    smsc: str, source: str, destination: str, data_coding: int, what: bytes, now_ms: int
) -> str:
    material = b"\x00".join(
        (
            smsc.encode(),
            source.encode(),
            destination.encode(),
            str(data_coding).encode(),
            what,
            str(now_ms // MO_REPEAT_MS).encode(),
        )
    )
    digest = hashlib.blake2b(material, digest_size=15).digest()
    return "mo_" + base64.b32encode(digest).decode().lower()


def incomplete_mo_id(
    smsc: str, source: str, destination: str, ref: int, total: int, first_received_at: int
) -> str:
    """The id of an MO delivered without some parts: the same whenever the same kept parts are
    delivered again (a sweep redone after a crash before the parts were dropped, or run by two
    instances at once), so the store keeps one. The first part's arrival tells this message from
    a later one that reuses the reference; the "incomplete" mark keeps it apart from the ids of
    complete MOs."""
    material = b"\x00".join(
        (
            b"incomplete",
            smsc.encode(),
            source.encode(),
            destination.encode(),
            str(ref).encode(),
            str(total).encode(),
            str(first_received_at).encode(),
        )
    )
    digest = hashlib.blake2b(material, digest_size=15).digest()
    return "mo_" + base64.b32encode(digest).decode().lower()


def decoded_mo(data_coding: int, parts: Iterable[tuple[bytes, int, int]]) -> Decoded:
    """An MO's text as stored from its parts (payload, national locking and single shift table
    ids: each GSM 7-bit part is read with the tables its UDH named), whether a part named one
    we lack (read with the default one), and whether its octets are not text in its coding
    (kept as hex). decode_segments's text, with U+0000 (a UCS-2 or Latin-1 NUL) as U+FFFD.
    PostgreSQL's text refuses NUL, so storing such an MO failed every time and the SMSC resent
    it for ever; it carries nothing readable. (GSM's octet 0x00 is "@", untouched.)"""
    decoded = decode_segments(data_coding, parts)
    return decoded._replace(text=decoded.text.replace("\x00", "\ufffd"))


def parts_text(data_coding: int, parts: list[MoPart]) -> Decoded:
    """decoded_mo of kept parts, consecutive ones, joined."""
    return decoded_mo(data_coding, [(p.payload, p.locking, p.single) for p in parts])


def join_runs(parts: list[MoPart]) -> str:
    """join_runs_text's text."""
    return join_runs_text(parts).text


def join_runs_text(parts: list[MoPart]) -> Decoded:
    """The text of the parts present (in seq order): each run of consecutive parts joined then
    decoded, as a handset does, so a pair cut across two present parts still decodes; a pair cut
    by a missing part decodes with a replacement character (decode_payload never raises). Runs
    are separated by GAP, so the reader sees where text is missing. Also whether a part named an
    unknown national language table, and whether a run's octets are not text (hex)."""
    runs: list[list[MoPart]] = []
    for p in parts:
        if runs and p.seq == runs[-1][-1].seq + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    texts = [parts_text(run[0].data_coding, run) for run in runs]
    return Decoded(
        GAP.join(t.text for t in texts),
        any(t.unknown_language for t in texts),
        any(t.undecodable for t in texts),
        any(t.hex for t in texts),
    )


def _e164(addr: str, ton: int, national_prefix: str | None = None) -> str:
    """The MO's source as E.164 when it is international: TON 1, a "+", or (TON 0, unknown, as
    many SMSCs send) 10 digits or more, without a leading international prefix 00. A national
    number (TON 2, digits starting with a trunk 0, or under TON 0 a mobile number of the
    SMSC's country as written there: phone.is_national_mobile) is read in the SMSC's country
    (`national_prefix`, its trunk 0 dropped: 07700900123 is +447700900123), else kept as
    received: read as international, China's 13800138000 became the North American
    +13800138000, and a national TD reply matched nothing (a Chinese SMSC sends it so with
    TON 0 as often as with TON 2)."""
    digits = addr.lstrip("+")
    if not addr.startswith("+") and ton in (0, 1) and digits.startswith("00"):
        digits = digits[2:]  # the international call prefix some SMSCs leave on: 0086138...
    national = not addr.startswith("+") and (
        ton == 2
        or digits.startswith("0")
        or (
            ton == 0
            and national_prefix is not None
            and phone.is_national_mobile(digits, national_prefix)
        )
    )
    if national and national_prefix is not None and digits.isdigit() and digits.strip("0"):
        return national_prefix + (digits[1:] if digits.startswith("0") else digits)
    if digits.startswith("0"):
        # No country code starts with 0: a national number with its trunk 0 (07700900123) is
        # kept as received, never made a "+0..." that matches nothing.
        return addr
    if digits.isdigit() and (ton == 1 or addr.startswith("+") or (ton == 0 and len(digits) >= 10)):
        return "+" + digits
    return addr
