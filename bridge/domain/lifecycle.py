"""Message life cycle: how segment states roll up to the message state (README, "Architecture").

Pure so both store engines apply the exact same rule and it can be tested exhaustively.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.fastinit import fast_init

# Segment states.
SEG_QUEUED = "queued"
SEG_SENT = "sent"
SEG_DELIVERED = "delivered"
SEG_FAILED = "failed"  # permanent submit error, or never sent because an earlier part failed
SEG_TIMEOUT = "timeout"  # no receipt within the receipt timeout
SEG_EXPIRED_UNSENT = "expired_unsent"  # validity passed before it could be sent
# Negative receipt states (from bridge.smpp.receipt.ReceiptState values).
SEG_NEGATIVE = frozenset({"undeliverable", "expired", "rejected", "unknown", SEG_FAILED})
SEG_FINAL = SEG_NEGATIVE | {SEG_DELIVERED, SEG_TIMEOUT, SEG_EXPIRED_UNSENT}
# Parts an SMSC took: sent, or with a receipt (which may come before the submit_sm_resp).
SEG_ACCEPTED = frozenset({SEG_SENT, SEG_DELIVERED, SEG_TIMEOUT}) | (SEG_NEGATIVE - {SEG_FAILED})
# Outcomes a carrier's receipt gives a part (not a submit error, a timeout or an expiry unsent).
SEG_RECEIPTED = frozenset({SEG_DELIVERED}) | (SEG_NEGATIVE - {SEG_FAILED})
# Errors of parts ended `timeout` with no submit seen: whether they reached the SMSC is unknown.
UNSEEN_SUBMIT = frozenset({"RESTORED_FROM_BACKUP", "IN_FLIGHT_AT_RESTART"})

# Message states.
MSG_QUEUED = "queued"
MSG_SENT = "sent"
MSG_DELIVERED = "delivered"
MSG_FAILED = "failed"
MSG_EXPIRED = "expired"
MSG_UNKNOWN = "unknown"
MSG_FINAL = frozenset({MSG_DELIVERED, MSG_FAILED, MSG_EXPIRED, MSG_UNKNOWN})


def never_reached(state: str, segments_sent: int, unanswered: int) -> bool:
    """Whether a message that ended so never reached anyone, and so gives back its place in the
    account's daily count (daily_quota) and in the per-recipient frequency history.

    That is a message ended `expired` with no part an SMSC accepted and no submit left
    unanswered: canceled, ended unsent by the system after acceptance (an opt-out, a
    do-not-contact list, a template or sign deleted or rejected, marketing or free text revoked,
    a sender no longer allowed, the account disabled, an erasure), or whose validity passed while
    it waited. A campaign canceled and scheduled again is then not refused for messages that
    never went out. A submit the SMSC refused (`failed`) or never answered may have reached a
    carrier, and a part accepted may have reached the phone: those keep their place.
    Both engines apply this rule (rollup_messages) and STILL_COUNTS_SQL, its SQL form.
    """
    return state == MSG_EXPIRED and segments_sent == 0 and unanswered == 0


# never_reached() as a condition on a messages row ({m}: the table alias with its dot, or
# empty), and its negation: the frequency history reads only the messages that still count.
NEVER_REACHED_SQL = (
    f"({{m}}state = '{MSG_EXPIRED}' AND {{m}}segments_sent = 0 AND {{m}}q_unanswered = 0)"
)
STILL_COUNTS_SQL = f"NOT {NEVER_REACHED_SQL}"


# Why the system ends a message unsent after acceptance, not a carrier's doing: the customer's
# cancel, and what an opt-out, a do-not-contact list, an erasure or a rule change (an account
# disabled, a template or sign deleted or rejected, marketing or free text revoked, a sender no
# longer allowed) withdraws, and a message found with no part row to send (NO_PARTS, the
# roll-up's: bridge/store/rollup_rows.py). Validity expiry (VALIDITY_EXPIRED) is not among them:
# it is the `failed` of /v1/stats, what expired waiting. NO_PARTS was counted there too until
# session 51, though nothing expired: it is refunded and gives its place back as the withdrawn do.
CANCELED = "CANCELED"
NO_PARTS = "NO_PARTS"
WITHDRAWN_CODES = frozenset(
    {
        "ACCOUNT_DISABLED",
        "ERASED",
        "MARKETING_NOT_ALLOWED",
        NO_PARTS,
        "RAW_TEXT_NOT_ALLOWED",
        "RECIPIENT_BLOCKED",
        "RECIPIENT_OPTED_OUT",
        "SENDER_NOT_ALLOWED",
        "SIGN_DELETED",
        "SIGN_REJECTED",
        "TEMPLATE_DELETED",
        "TEMPLATE_REJECTED",
    }
)

# The /v1/stats buckets a message falls in by its status now (stat_of); with `submitted` (all)
# and the counts of parts and units, the report's fields (bridge/api/reports.py STAT_FIELDS).
STAT_BUCKETS = ("delivered", "failed", "canceled", "withdrawn", "pending", "unknown")


def stat_of(state: str, error_code: str | None, segments_sent: int, unanswered: int) -> str:
    """The /v1/stats bucket of a message, so `failed` means what it says to an operator: what
    carriers failed (a submit refused, a negative receipt) or what expired waiting.

    `canceled`: canceled by the customer. `withdrawn`: ended unsent by the system (one of
    WITHDRAWN_CODES) without reaching anyone (never_reached: no part accepted, no submit left
    unanswered), the messages whose places were given back. One that may have gone out (a part
    accepted, or a submit never answered) before the rest was withdrawn is `failed`, as one
    that expired. Both engines count by STAT_SQL, this rule in SQL."""
    if state == MSG_DELIVERED:
        return "delivered"
    if state in (MSG_QUEUED, MSG_SENT):
        return "pending"
    if state == MSG_UNKNOWN:
        return "unknown"
    if never_reached(state, segments_sent, unanswered):
        if error_code == CANCELED:
            return "canceled"
        if error_code in WITHDRAWN_CODES:
            return "withdrawn"
    return "failed"


def _stat_sql() -> dict[str, str]:
    codes = ", ".join(f"'{c}'" for c in sorted(WITHDRAWN_CODES))
    unsent = NEVER_REACHED_SQL.format(m="")
    canceled = f"{unsent} AND COALESCE(error_code, '') = '{CANCELED}'"
    withdrawn = f"{unsent} AND COALESCE(error_code, '') IN ({codes})"
    return {
        "delivered": f"state = '{MSG_DELIVERED}'",
        "failed": f"state IN ('{MSG_FAILED}', '{MSG_EXPIRED}') "
        f"AND NOT ({canceled}) AND NOT ({withdrawn})",
        "canceled": canceled,
        "withdrawn": withdrawn,
        "pending": f"state IN ('{MSG_QUEUED}', '{MSG_SENT}')",
        "unknown": f"state = '{MSG_UNKNOWN}'",
    }


# stat_of as one SQL condition per bucket on a messages row: each row meets exactly one (never
# NULL: COALESCE), as the unit tests check against stat_of.
STAT_SQL = _stat_sql()


# How long past its validity's end a message still waits for its receipt: the SMSC sends the
# expiry receipt when the validity passes, and a receipt queued at the carrier or behind a bind
# that was down comes a little later.
VALIDITY_RECEIPT_MARGIN_MS = 3_600_000
# The longest a message waits for its receipt, whatever its validity: as long as the longest
# pipeline.receipt_timeout_hours (720). A month's bill waits for its every message to be final,
# and billing.auto_settle looks back SETTLE_LOOKBACK_MONTHS counting on this bound; an SMSC's
# validity_minutes may be up to a year, and a 90-day one sent on a month's last day kept that
# month from ever being settled by the daemon (the retention then kept every message from it).
MAX_RECEIPT_WAIT_MS = 720 * 3_600_000


def receipt_deadline(
    sent_at: int,
    timeout_ms: int,
    expires_at: int | None,
    smsc_validity_ms: int | None = None,
    final_receipts: bool = True,
) -> int:
    """When a message `sent` without its final receipt ends `unknown` (NO_RECEIPT, billed).

    The receipt timeout after sending, or, when later, the end of the validity the SMSC was
    given plus VALIDITY_RECEIPT_MARGIN_MS: the message's own (`expires_at`, sent as an absolute
    validity_period), else its SMSC's relative one (smscs[].validity_minutes, from the send).
    While the carrier may still deliver the message it is not over: ended at 72 h, a 5-day
    validity's delivery on day 4 found it `unknown` already, its receipt too late to count.
    At most MAX_RECEIPT_WAIT_MS after sending all the same (the month's bill waits for it).
    Not `final_receipts` (its SMSC was asked for none: registered_delivery without bits 0-1),
    the timeout alone: no expiry receipt comes at the validity's end, and waiting for it only
    held the month's bill. `timed_out_where` is this rule in SQL, for both engines."""
    deadline = sent_at + timeout_ms
    if not final_receipts:
        return deadline
    end = expires_at
    if end is None and smsc_validity_ms:
        end = sent_at + smsc_validity_ms
    if end is None:
        return deadline
    return max(deadline, min(end + VALIDITY_RECEIPT_MARGIN_MS, sent_at + MAX_RECEIPT_WAIT_MS))


def split_deadline(
    sent_at: int,
    timeout_ms: int,
    expires_at: int | None,
    smscs: Iterable[str],
    smsc_validity_ms: Mapping[str, int],
    silent: Collection[str] = (),
) -> int:
    """receipt_deadline of a message whose parts still awaiting their receipts went out on the
    SMSCs `smscs` (more than one: the first part's SMSC removed by a reload while the rest
    waited, and those sent through the route's next one): the latest of theirs, each by
    its own validity (`smsc_validity_ms`) and whether it was asked for final receipts (not one
    of `silent`: a silent SMSC's part ends at the timeout). While any of them may still deliver
    its part and say so, the message is not over; read from the SMSC of its last part alone
    (`messages.smsc`, timed_out_where), it ended `unknown` at the timeout with a part on a
    5-day validity still on its way. None awaiting: the timeout."""
    return max(
        (
            receipt_deadline(
                sent_at, timeout_ms, expires_at, smsc_validity_ms.get(s), s not in silent
            )
            for s in smscs
        ),
        default=sent_at + timeout_ms,
    )


# The SMSCs a sweep's candidates' parts await receipts from ({ids}: the engine's list of ids).
AWAITING_SMSCS_SQL = (
    "SELECT DISTINCT message_id, smsc FROM segments WHERE message_id IN ({ids}) "
    f"AND state = '{SEG_SENT}' AND smsc IS NOT NULL"
)


def not_yet_timed_out(
    rows: Iterable[tuple[str, int, int | None, str | None]],
    awaiting: Mapping[str, Collection[str]],
    now: int,
    timeout_ms: int,
    smsc_validity_ms: Mapping[str, int],
    silent: Collection[str] = (),
) -> set[str]:
    """Of the messages timed_out_where found, (id, sent_at, expires_at, smsc), those not due
    yet by split_deadline: their parts await receipts (`awaiting`: id -> SMSCs) from another
    SMSC than the one the row names, which may wait longer. The row's SMSC is the last part's,
    and when it waits longest (or alone) the SQL was exact, so only split messages are looked
    at. One the row's SMSC makes wait longer than its parts' need is not found before its
    time: it waits as it did before (never less than a part's SMSC allows).

    Only needed when the SMSCs' waits differ (some validity outlasts the timeout, or an SMSC
    is silent): the engines read `awaiting` (AWAITING_SMSCS_SQL) then alone."""
    out: set[str] = set()
    for mid, sent_at, expires_at, smsc in rows:
        smscs = awaiting.get(mid, ())
        if all(s == smsc for s in smscs):
            continue
        if split_deadline(sent_at, timeout_ms, expires_at, smscs, smsc_validity_ms, silent) > now:
            out.add(mid)
    return out


def waits_differ(
    timeout_ms: int, smsc_validity_ms: Mapping[str, int], silent: Collection[str]
) -> bool:
    """Whether two SMSCs may give one message different receipt deadlines (not_yet_timed_out
    has anything to do): an SMSC asked for no final receipt, or a validity that outlasts the
    timeout."""
    return bool(silent) or any(
        min(ms + VALIDITY_RECEIPT_MARGIN_MS, MAX_RECEIPT_WAIT_MS) > timeout_ms
        for ms in smsc_validity_ms.values()
    )


def timed_out_where(
    now: int,
    timeout_ms: int,
    smsc_validity_ms: Mapping[str, int],
    mark: Callable[[int], str],
    silent: Collection[str] = (),
) -> tuple[str, list[Any]]:
    """`receipt_deadline(...) <= now` as a condition on a messages row, with its parameters:
    `mark(i)` is the engine's i-th (from 1) placeholder. `smsc_validity_ms` holds each SMSC's
    relative validity (ms); the row's `smsc` (the SMSC that took its last part) names it. Only
    SMSCs whose validity outlasts the timeout add a term. `silent`: the SMSCs asked for no
    final receipt, whose messages end at the timeout whatever their validity. Read by sent_at
    (the messages_open index), it steps over the messages past the timeout that wait for a long
    validity's end: ~0.4-0.6 us each per sweep (scripts/bench_receipt_sweep.py). Split in two
    by whether a message has a validity, each on a partial index of its own, it was slower on a
    mix with short validities: a message whose validity ended without a receipt, sent within
    the timeout, was stepped over instead (100,000 waiting beside 66,000 of those: 266-323 ms
    against 21-51 ms, session 48 on a loaded machine)."""
    params: list[Any] = [
        now - timeout_ms,
        now - VALIDITY_RECEIPT_MARGIN_MS,
        now - MAX_RECEIPT_WAIT_MS,
    ]
    # Each SMSC's wait after the send: its validity and the margin, at most the bound.
    waits = {
        name: min(ms + VALIDITY_RECEIPT_MARGIN_MS, MAX_RECEIPT_WAIT_MS)
        for name, ms in smsc_validity_ms.items()
    }
    longer = sorted((name, wait) for name, wait in waits.items() if wait > timeout_ms)
    by_smsc = "1 = 1"
    if longer:
        terms = []
        for name, wait in longer:
            params += [name, now - wait]
            terms.append(f"(smsc <> {mark(len(params) - 1)} OR sent_at <= {mark(len(params))})")
        by_smsc = "(smsc IS NULL OR (" + " AND ".join(terms) + "))"
    # The placeholders in the order of `params` (SQLite's `?` are positional).
    quiet = ""
    if silent:
        marks = []
        for name in sorted(silent):
            params.append(name)
            marks.append(mark(len(params)))
        quiet = f" OR smsc IN ({', '.join(marks)})"
    sql = (
        f"state = '{MSG_SENT}' AND sent_at <= {mark(1)} AND (CASE WHEN expires_at IS NOT NULL "
        f"THEN (expires_at <= {mark(2)} OR sent_at <= {mark(3)}) ELSE {by_smsc} END{quiet})"
    )
    return sql, params


# Receipt-state -> segment error code for the message record; SMPP stat words as carriers use them.
_RECEIPT_ERROR = {
    "undeliverable": "UNDELIV",
    "expired": "EXPIRED",
    "rejected": "REJECTD",
    "unknown": "UNKNOWN",
}


def receipt_error_code(state: str, stat: str | None, err: str | None) -> str | None:
    """The error code a negative receipt leaves on the segment: the stat word, plus err if given."""
    if state not in _RECEIPT_ERROR:
        return None
    word = (stat or _RECEIPT_ERROR[state]).upper()
    if err and err.strip("0"):
        return f"{word}:{err}"
    return word


def rollup(states: Iterable[str]) -> str:
    """The message state implied by its segments' states.

    A message is final only when every segment is final, so a long message is never reported
    delivered on a guess from one part (the Kannel/Jasmin flaw), and billing sees one outcome.
    """
    return _state_of(set(states))


_ONLY_DELIVERED = frozenset({SEG_DELIVERED})
_ERROR_STATES = SEG_NEGATIVE | {SEG_EXPIRED_UNSENT}  # the parts whose error code the row shows


def _state_of(seen: set[str]) -> str:
    """rollup over the set of its parts' states. Set operations, not a generator pass per rule:
    the roll-up runs twice per message inside the store's write lock, where those passes (and
    summarize's four more) were most of row_update's time (a one-part message, three
    alternating runs on a loaded machine: 7.3-11.2 µs against 2.6-4.9 now)."""
    if not seen or SEG_QUEUED in seen:
        # Even beside expired parts: a part still queued is unsettled, and reporting the message
        # final here fired its webhook and done_at while results for that part were in flight.
        return MSG_QUEUED
    if not seen <= SEG_FINAL:
        return MSG_SENT
    if seen == _ONLY_DELIVERED:
        return MSG_DELIVERED
    negative = not SEG_NEGATIVE.isdisjoint(seen)
    if SEG_EXPIRED_UNSENT in seen and not negative:
        return MSG_EXPIRED
    if negative:
        return MSG_FAILED
    return MSG_UNKNOWN


@fast_init
@dataclass(frozen=True, slots=True)
class Summary:
    """What a message row records about its parts: state, counts, the error to show."""

    state: str
    delivered: int
    failed: int
    error: str | None
    all_dispatched: bool  # no part left to send


def summarize(parts: Sequence[tuple[str, str | None]], segments: int = 0) -> Summary:
    """Roll (state, error_code) of each part, in seq order, up to the message.

    `segments` is the message's count on the air: one part of a message of more segments is a
    message_payload PDU (split: payload) the SMSC splits itself, and its one receipt stands for
    all of them (segments_sent counts them so too), so its counts are scaled to `segments`.
    """
    # By position (a class called with keywords gets a dict its __init__ unpacks again); the
    # field order is held by tests/unit/test_session52_positional_claim.py.
    return Summary(*_summary(parts, segments))


_SummaryValues = tuple[str, int, int, str | None, bool]

# _summary's answers by (scale, *parts): a message's parts take few combinations of states and
# error codes (a one-part message's roll-ups nearly always one of a handful), and working one out
# was ~8.7 k instructions where its lookup is well under 1 k (twice a message in the owner's
# write lock: README, Architecture note 27). Emptied when it holds _SUMMARIES_MAX. Only messages
# of up to _SUMMARY_PARTS_MAX parts: a key holds every part's tuple and strings as the store read
# them (~25-36 KB a 255-part message: 4,096 of them ~150 MB held for good), and a longer
# message's combinations seldom come twice (session 54, r1).
_SUMMARIES: dict[tuple[Any, ...], _SummaryValues] = {}
_SUMMARIES_MAX = 4096
_SUMMARY_PARTS_MAX = 4


def _summary(parts: Sequence[tuple[str, str | None]], segments: int) -> _SummaryValues:
    """summarize's fields as a tuple, in Summary's order: row_update takes them apart at once,
    and a frozen Summary built to be read once was ~4 k instructions of each roll-up. The same
    parts (their states and error codes, in order) and scale give the same values: kept."""
    n = len(parts)
    if n == 1:
        scale = segments if segments > 1 else 1
    elif n > _SUMMARY_PARTS_MAX:
        return _summary_of(parts, 1)
    else:
        scale = 1
    key = (scale, *parts)
    try:
        got = _SUMMARIES.get(key)
    except TypeError:  # a part given as a list (unhashable): worked out, not kept
        return _summary_of(parts, scale)
    if got is None:
        got = _summary_of(parts, scale)
        if len(_SUMMARIES) >= _SUMMARIES_MAX:
            _SUMMARIES.clear()
        _SUMMARIES[key] = got
    return got


def _summary_of(parts: Sequence[tuple[str, str | None]], scale: int) -> _SummaryValues:
    states = [s for s, _e in parts]
    seen = set(states)
    new = _state_of(seen)
    error = None
    if not seen.isdisjoint(_ERROR_STATES):
        error = next(e for s, e in parts if s in _ERROR_STATES)
    elif new == MSG_UNKNOWN:  # only delivered and timed-out parts
        error = next((e for s, e in parts if s == SEG_TIMEOUT), None)
    return (
        new,  # state
        scale * states.count(SEG_DELIVERED),  # delivered
        scale * sum(map(SEG_NEGATIVE.__contains__, states)),  # failed
        error,  # error
        SEG_QUEUED not in seen,  # all_dispatched
    )


@fast_init
@dataclass(frozen=True, slots=True)
class RowUpdate:
    """The new message row after its parts changed, and what the change means for reports."""

    state: str
    delivered: int
    failed: int
    error: str | None
    sent_at: int | None  # set when the message just went out ("sent", or final from queued)
    done_at: int | None  # set when it just became final
    release: bool  # give the dispatch claim back: nothing is left to send
    became_sent: bool
    became_final: bool


# RowUpdate's fields in its order, as a plain tuple (row_values): what the roll-up's engines
# take apart once per message.
RowValues = tuple[str, int, int, str | None, int | None, int | None, bool, bool, bool]


def row_update(
    parts: Sequence[tuple[str, str | None]],
    *,
    old_state: str,
    q_state: str,
    old_delivered: int,
    old_failed: int,
    old_error: str | None,
    release_when_dispatched: bool,
    now: int,
    segments: int = 0,
) -> RowUpdate | None:
    """The roll-up both store engines apply; None when the row would not change (row_values,
    as a RowUpdate: what the engines' roll-up takes as a tuple)."""
    v = row_values(
        parts, old_state, q_state, old_delivered, old_failed, old_error,
        release_when_dispatched, now, segments,
    )  # fmt: skip
    return None if v is None else RowUpdate(*v)


def row_values(
    parts: Sequence[tuple[str, str | None]],
    old_state: str,
    q_state: str,
    old_delivered: int,
    old_failed: int,
    old_error: str | None,
    release_when_dispatched: bool,
    now: int,
    segments: int = 0,
) -> RowValues | None:
    """row_update's answer as a tuple in RowUpdate's field order, taken by position: the
    roll-up (rollup_rows.roll, twice a message in the owner's write lock) reads each value
    once, and a frozen RowUpdate built for that was ~4.2 k instructions a roll-up, its keyword
    call ~0.7 k more (session 55).

    `release_when_dispatched` is true after submit results (the dispatcher is done with the
    message once no part is queued); after receipts only a final message releases its claim.
    """
    state, delivered, failed, error, all_dispatched = _summary(parts, segments)
    release = (
        (release_when_dispatched or state in MSG_FINAL) and all_dispatched and q_state != "done"
    )
    became_sent = state == MSG_SENT and old_state != MSG_SENT
    became_final = state in MSG_FINAL and old_state not in MSG_FINAL
    # A message whose receipts came before its submit_sm_resp goes from queued straight to
    # final: it went out all the same, so it gets its sent time (the stores keep the first).
    # Not one ended unknown without a submit seen here (restored from a backup, in flight at a
    # restart): whether and when it went out is what nobody knows, and "sent" at the moment
    # `db after-restore` ran told the customer otherwise.
    stamp_sent = became_sent or (
        old_state == MSG_QUEUED
        and became_final
        and any(st in SEG_ACCEPTED and e not in UNSEEN_SUBMIT for st, e in parts)
    )
    if (
        state == old_state
        and delivered == old_delivered
        and failed == old_failed
        and error == old_error
        and not release
    ):
        return None
    return (
        state,  # state
        delivered,  # delivered
        failed,  # failed
        error,  # error
        now if stamp_sent else None,  # sent_at
        now if became_final else None,  # done_at
        release,  # release
        became_sent,  # became_sent
        became_final,  # became_final
    )


def on_air(segments_sent: int, segments: int, pdus: int, one_pdu: bool) -> int:
    """A message's segments on the air after `pdus` more of its PDUs were accepted.

    Counted in segments, as `segments` is, not PDUs: a message sent whole in message_payload
    (split: payload; `one_pdu`, its one part row standing for all `segments`) is one PDU the
    SMSC splits, and international traffic is billed per transmitted segment (refund_share,
    settlement). Capped at `segments`: a repeated result never counts twice over.
    """
    added = segments if segments > 1 and one_pdu else pdus
    return min(segments, segments_sent + added)


def receipt_targets(candidates: Sequence[tuple[str, int, str]]) -> list[tuple[str, int]]:
    """The parts one receipt settles, of the (message id, seq, state) parts its SMSC id matches.

    Only open parts (no final state yet), and of those only the newest message's (message ids
    sort by time), every open part of it. An SMSC that starts its ids over (a restart, a
    counter wrap) reuses an id whose old part is final, or still waiting out its receipt
    timeout: the receipt is the new part's. An SMSC that answers every part of a long message
    with one id sends one receipt for all of them: matched to one part, the others waited 72 h
    and the message ended unknown. Empty when every candidate is final (a duplicate or late
    receipt: the first final outcome stands).
    """
    open_parts = [(mid, seq) for mid, seq, state in candidates if state not in SEG_FINAL]
    if not open_parts:
        return []
    newest = max(mid for mid, _seq in open_parts)
    return sorted(p for p in open_parts if p[0] == newest)


def settle_receipts(
    receipts: Sequence[Any],
    parts: dict[tuple[str, str], list[tuple[str, int, str]]],
    *,
    one_per_message: Collection[str] = (),
    siblings: Mapping[str, Sequence[tuple[int, str, str | None, int | None]]] | None = None,
) -> tuple[list[tuple[str, int, str, int, str | None, int | None]], list[Any]]:
    """What receipts do to the parts their (SMSC, id) names, for both store engines.

    `receipts` have smsc, smsc_msg_id, state, stat, err and received_at; `parts` maps (SMSC,
    normalised id) to the (message id, seq, state) it names, and is updated as parts settle, so
    a second receipt for an id in the same batch finds them final (the first outcome stands).
    Returns the part updates (message id, seq, new state, done at, error code, the seq whose
    receipt settled it when not its own: segments.receipt_inferred_from) and the receipts that
    named no known part (kept pending).

    A receipt from an SMSC in `one_per_message` (smscs[].receipts) stands for its whole
    message: `siblings` (message id -> every part's (seq, state, SMSC, submitted at)) gives the
    parts it also settles (`infer_siblings`)."""
    updates: list[tuple[str, int, str, int, str | None, int | None]] = []
    unmatched: list[Any] = []
    now_final: dict[tuple[str, int], str] = {}  # parts settled by inference in this batch
    for r in receipts:
        key = (r.smsc, r.smsc_msg_id)
        found = parts.get(key)
        if found is None:
            unmatched.append(r)
            continue
        if r.state == "enroute":
            continue  # intermediate
        if now_final:
            found = parts[key] = [(m, q, now_final.get((m, q), st)) for m, q, st in found]
        new_state = SEG_DELIVERED if (got := r.state) == "delivered" else got
        # A positive receipt has none: not a call a receipt to learn it (session 60).
        error = receipt_error_code(got, r.stat, r.err) if got in _RECEIPT_ERROR else None
        if len(found) == 1:  # the usual case: one part has the id
            mid, seq, state = found[0]
            if state in SEG_FINAL:
                continue  # duplicate or late: the first final outcome stands
            # Without the set, its sort and the list built again of the general case below:
            # ~10 k instructions a receipt, most of them those (the owner's write lock).
            updates.append((mid, seq, new_state, r.received_at, error, None))
            parts[key] = [(mid, seq, new_state)]
            if siblings is not None and r.smsc in one_per_message:
                for other, oseq, at, source in infer_siblings(
                    ((mid, seq),), siblings, r.smsc, new_state, r.received_at, now_final
                ):
                    updates.append((other, oseq, new_state, at, error, source))
            continue
        settled = set(receipt_targets(found))  # none: duplicate or late, the first stands
        for mid, seq in sorted(settled):
            updates.append((mid, seq, new_state, r.received_at, error, None))
        if settled:
            parts[key] = [(m, q, new_state if (m, q) in settled else st) for m, q, st in found]
        if settled and siblings is not None and r.smsc in one_per_message:
            for mid, seq, at, source in infer_siblings(
                settled, siblings, r.smsc, new_state, r.received_at, now_final
            ):
                updates.append((mid, seq, new_state, at, error, source))
    return updates, unmatched


def count_after_timeout(
    receipts: Sequence[Any],
    parts: Mapping[tuple[str, str], Sequence[tuple[str, int, str]]],
    into: dict[str, int],
) -> None:
    """Add to `into` (SMSC -> receipts) the final receipts that name only finished parts, one
    of them ended by the receipt timeout (SEG_TIMEOUT): they change nothing (the first final
    outcome stands, reported and billed), and an operator sees by them (the
    smpp_bridge_receipts_after_timeout metric) that a carrier reports later than
    pipeline.receipt_timeout_hours waits. Read before `settle_receipts` settles the batch."""
    for r in receipts:
        found = parts.get((r.smsc, r.smsc_msg_id))
        if r.state == "enroute" or not found:
            continue
        if len(found) == 1:  # the usual case, without two generators (a timed-out part is final)
            if found[0][2] == SEG_TIMEOUT:
                into[r.smsc] = into.get(r.smsc, 0) + 1
        elif all(st in SEG_FINAL for _m, _q, st in found) and any(
            st == SEG_TIMEOUT for _m, _q, st in found
        ):
            into[r.smsc] = into.get(r.smsc, 0) + 1


def count_inferred(
    updates: Iterable[tuple[str, int, str, int, str | None, int | None]],
    siblings: Mapping[str, Sequence[tuple[int, str, str | None, int | None]]],
    into: dict[str, int],
) -> None:
    """Add to `into` (SMSC -> parts) the parts of `settle_receipts`' updates that another part's
    receipt settled, by the SMSC that took them (the smpp_bridge_receipts_inferred metric)."""
    via = {(mid, q): smsc for mid, rows in siblings.items() for q, _st, smsc, _at in rows}
    for mid, seq, *_rest, source in updates:
        smsc = via.get((mid, seq))
        if source is not None and smsc is not None:
            into[smsc] = into.get(smsc, 0) + 1


def whole_messages(
    parts: Mapping[tuple[str, str], Sequence[tuple[str, int, str]]],
    one_per_message: Collection[str],
) -> list[str]:
    """The messages whose other parts a receipt batch may settle: those matched by a receipt
    from a one-per-message SMSC (their parts are read for `settle_receipts`' siblings)."""
    if not one_per_message:  # most SMSCs: no pass over the batch's parts
        return []
    mids = {mid for key, found in parts.items() if key[0] in one_per_message for mid, *_ in found}
    return sorted(mids)


def infer_siblings(
    settled: Collection[tuple[str, int]],
    siblings: Mapping[str, Sequence[tuple[int, str, str | None, int | None]]],
    smsc: str,
    state: str,
    at: int,
    now_final: dict[tuple[str, int], str],
) -> list[tuple[str, int, int, int]]:
    """The other parts a one-per-message receipt settles: (message id, seq, done at, the seq
    whose receipt it was). They take the receipt's state and error code.

    Only parts the same SMSC took and that await their receipt (`sent`): a part still queued
    has not reached the handset, and reporting it delivered (or billing it) on another part's
    receipt would be a guess about text the carrier has not even had; it is sent, and
    `infer_on_accept` settles it when the SMSC takes it. Parts final already keep their
    outcome. `now_final` is updated with what this settles (and with `settled`), so later
    receipts of the batch find those parts final. A part the SMSC took after the receipt came
    (one kept until its submit_sm_resp was recorded) is settled as of its submission, never
    before it."""
    out: list[tuple[str, int, int, int]] = []
    for mid, seq in settled:
        now_final[(mid, seq)] = state
    for mid in sorted({m for m, _q in settled}):
        source = min(q for m, q in settled if m == mid)
        for seq, st, via, submitted_at in siblings.get(mid, ()):
            if via != smsc or now_final.get((mid, seq), st) != SEG_SENT:
                continue
            now_final[(mid, seq)] = state
            out.append((mid, seq, max(at, submitted_at or 0), source))
    return out


# A part as the engines read it for inference: (seq, state, error code, SMSC,
# receipt_inferred_from, submitted at, done at).
PartRow = tuple[int, str, str | None, str | None, int | None, int | None, int | None]


def infer_on_accept(
    parts: Sequence[tuple[int, str, str | None, str | None, int | None]],
    fresh: Collection[int],
    now: int,
) -> list[tuple[int, str, int, str | None, int]]:
    """Parts an SMSC took just now whose message's one receipt (smscs[].receipts:
    one_per_message) came already, for an earlier part: (seq, state, done at, error, the seq
    whose receipt it was).

    `parts` are the message's (seq, state, error code, SMSC, receipt_inferred_from) after the
    fresh ones were recorded sent. Such a part gets no receipt of its own (the carrier sent the
    message's one), so it takes that outcome now instead of waiting out the receipt timeout; the
    source is the lowest part with an outcome of its own from a receipt, on the same SMSC."""
    source = next(
        (
            (seq, st, err, via)
            for seq, st, err, via, inferred in sorted(parts, key=lambda p: p[0])
            if st in SEG_RECEIPTED and inferred is None
        ),
        None,
    )
    if source is None:
        return []
    src_seq, state, err, smsc = source
    return [
        (seq, state, now, err, src_seq)
        for seq, st, _e, via, _i in parts
        if seq in fresh and st == SEG_SENT and via == smsc
    ]


def infer_earlier(
    parts: Sequence[tuple[int, str, str | None, str | None, int | None, int | None, int | None]],
    smscs: Collection[str],
) -> list[tuple[int, str, int, str | None, int]]:
    """Parts of one message left `sent` beside a part whose receipt came while its SMSC was not
    yet `one_per_message` (a reload or a restart switched it since): (seq, state, done at,
    error, the seq whose receipt it was), as `infer_siblings` would have settled them.

    `parts` are the message's (seq, state, error code, SMSC, receipt_inferred_from, submitted
    at, done at). The source is the lowest part with an outcome of its own from a receipt, on
    an SMSC of `smscs`; the parts that SMSC took and that still await theirs take its outcome,
    as of its receipt (never before their own submission)."""
    rows = sorted(parts, key=lambda p: p[0])
    source = next(
        (p for p in rows if p[1] in SEG_RECEIPTED and p[4] is None and p[3] in smscs), None
    )
    if source is None:
        return []
    src_seq, state, err, smsc, _i, _s, done = source
    return [
        (seq, state, max(done or 0, submitted or 0), err, src_seq)
        for seq, st, _e, via, _inf, submitted, _d in rows
        if st == SEG_SENT and via == smsc
    ]


# The messages `infer_earlier` may settle: a part still `sent` on one of the SMSCs ({smscs}: a
# list of marks) beside a part of the same SMSC with a receipt of its own. Both engines, their
# marks and a LIMIT mark ({limit}) filled in.
EARLIER_RECEIPTED_SQL = (
    "SELECT DISTINCT s.message_id FROM segments s WHERE s.smsc IN ({smscs}) AND s.state = 'sent' "
    "AND EXISTS (SELECT 1 FROM segments r WHERE r.message_id = s.message_id AND r.smsc = s.smsc "
    "AND r.receipt_inferred_from IS NULL AND r.state IN ("
    + ", ".join(f"'{st}'" for st in sorted(SEG_RECEIPTED))
    + ")) LIMIT {limit}"
)
