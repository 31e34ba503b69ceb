"""The OpenAPI half for the sending rules and money, merged into the document by
`bridge.api.openapi`.

Kept apart only for size: the same helpers and conventions as openapi.py (closed response objects,
every field required unless the handler may leave it out), written from what the handlers in
`bridge.api.rules_api` / `bridge.api.admin_rules` and the views in `bridge.review` /
`bridge.billing` really return. The integration suite validates every reply against this, so a
field changed in a view without being changed here fails the tests.
"""

from __future__ import annotations

from typing import Any

from bridge.api.openapi import (
    _MS,
    _STR,
    _account_props,
    _admin_op,
    _errors,
    _json_body,
    _nullable,
    _obj,
    _ok,
    _path_param,
    _query,
    _refund_props,
    _schema,
    _v1_op,
)
from bridge.domain.ledger import CARD_FACE_VALUES, EntryKind
from bridge.review import SIGN_SOURCES, TEMPLATE_KINDS
from bridge.text.units import CountingRule

_REVIEW_STATES = ["pending", "approved", "rejected"]
_MONTH = {
    "type": "string",
    "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$",
    "description": "YYYY-MM from 1970-01 to 9998-12",
}
_E164 = {"type": "string", "pattern": r"^\+[1-9][0-9]{6,14}$"}
_DECIMAL = {
    "type": "string",
    "pattern": r"^-?[0-9]+\.[0-9]{2,6}$",
    "description": "the micro amount as a decimal string, for display (never a float)",
}
_MICRO = {"type": "integer", "description": "micro-units of the currency (1 CNY = 1,000,000)"}
_COUNT = {"type": "integer", "minimum": 0}
_PREFIX = {"type": "string", "pattern": r"^\+[1-9][0-9]{0,14}$"}

RULES_TAGS = [
    {"name": "rules", "description": "sign names, templates, opt-outs, erasure (signed)"},
    {"name": "billing", "description": "balance, ledger and monthly bills (signed)"},
]


def _sign_props(operator: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "name": {"type": "string", "description": "NFKC form, 2-12 letters/digits/spaces"},
        "source": {"type": "string", "enum": list(SIGN_SOURCES)},
        "remark": _STR,
        "status": {"type": "string", "enum": _REVIEW_STATES},
        "reason": _nullable({"type": "string", "description": "the operator's, when rejected"}),
        "created_at": _MS,
        "reviewed_at": _nullable(_MS),
        "updated_at": _nullable(
            {**_MS, "description": "the last correction (PATCH); null: as submitted"}
        ),
    }
    if operator:
        props["account"] = {"type": "string", "pattern": "^acc_[0-9A-Z]{26}$"}
        props["flag"] = _nullable(
            {
                "type": "string",
                "description": "set when the name resembles another account's approved sign "
                "(possible impersonation); shown to operators only",
            }
        )
    return props


def _template_props(operator: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "code": {"type": "string", "pattern": "^SMS_[0-9]{9}$"},
        "type": {"type": "string", "enum": list(TEMPLATE_KINDS)},
        "name": _STR,
        "content": {"type": "string", "description": "with ${name} placeholders"},
        "remark": _STR,
        "allow_urls": {"type": "boolean", "description": "parameters may carry links"},
        "international": {
            "type": "boolean",
            "description": "for international (and Hong Kong, Macao, Taiwan) messages: the "
            "Alibaba face's TemplateType 3; the type stays the sending rules'",
        },
        "status": {"type": "string", "enum": _REVIEW_STATES},
        "reason": _nullable(
            {
                "type": "string",
                "description": "why it was rejected: the automatic review's reasons "
                "(`CODE: reason; ...`, e.g. TEMPLATE_CONTENT_FILTERED, TEMPLATE_TOO_LONG, "
                "TEMPLATE_MALFORMED, TEMPLATE_NO_OPTOUT_WORDING, TEMPLATE_EMPTY) or the operator's",
            }
        ),
        "created_at": _MS,
        "reviewed_at": _nullable(
            {
                **_MS,
                "description": "an operator's decision; null until then (and when the "
                "automatic review rejected it)",
            }
        ),
        "revision": {
            "type": "integer",
            "minimum": 1,
            "description": "1 as submitted, one more with each correction (PATCH)",
        },
        "updated_at": _nullable(
            {**_MS, "description": "the last correction (PATCH); null: as submitted"}
        ),
    }
    if operator:
        props["account"] = {"type": "string", "pattern": "^acc_[0-9A-Z]{26}$"}
    return props


def _pocket_list(description: str) -> dict[str, Any]:
    return {
        "type": "array",
        "description": description,
        "items": _obj(
            {
                "id": _STR,
                "remaining_micro": {"type": "integer", "minimum": 1},
                "remaining": _DECIMAL,
                "expires_at": _nullable({**_MS, "description": "null: never expires"}),
            }
        ),
    }


def _balance_props() -> dict[str, Any]:
    return {
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "cash_micro": {**_MICRO, "description": "cash; never below zero for a prepaid account"},
        "cash": _DECIMAL,
        "vouchers": _pocket_list(
            "valid vouchers with a remainder, spent before cash (earliest expiry first); an "
            "expired voucher's remainder is void and not listed"
        ),
        "cards": _pocket_list(
            "valid stored-value cards with a remainder; international traffic only"
        ),
        "available_domestic_micro": {**_MICRO, "description": "vouchers + cash (if positive)"},
        "available_international_micro": {
            **_MICRO,
            "description": "vouchers + cards + cash (if positive)",
        },
        "invoiced_micro": {**_MICRO, "description": "postpaid: invoiced by settlements so far"},
    }


def _tariff_props() -> dict[str, Any]:
    return {
        "version": {"type": "string", "minLength": 1},
        "effective_at": {**_MS, "minimum": 0, "description": "unix ms; in force from then on"},
        "tiers": {
            "type": "array",
            "minItems": 1,
            "description": "all-units tiers by the month's total; the last one unbounded",
            "items": _obj(
                {
                    "up_to": _nullable(
                        {"type": "integer", "minimum": 1, "description": "inclusive; null = last"}
                    ),
                    "price": {**_MICRO, "minimum": 1},
                }
            ),
        },
        "starting_price": {
            **_MICRO,
            "minimum": 1,
            "description": "per unit at acceptance (the prepaid pre-charge; postpaid is invoiced); "
            ">= every tier price",
        },
        "counting_rule": {"type": "string", "enum": [r.value for r in CountingRule]},
        "domestic_bill_on": {"type": "string", "enum": ["delivered"]},
        "international_bill_on": {"type": "string", "enum": ["submitted"]},
        "international": {
            "type": "object",
            "description": "E.164 country prefix -> micro per transmitted segment (longest "
            "prefix wins)",
            "additionalProperties": {"type": "integer", "minimum": 1},
        },
        "domestic_prefix": _PREFIX,
    }


def _bill_props() -> dict[str, Any]:
    return {
        "month": _MONTH,
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "account_kind": {"type": "string", "enum": ["prepaid", "postpaid"]},
        "units": {**_COUNT, "description": "billable domestic units of the month"},
        "tier": {"type": "integer", "minimum": 1, "description": "1-based tier the total reached"},
        "tier_price_micro": _MICRO,
        "tier_price": _DECIMAL,
        "domestic_amount_micro": {**_MICRO, "description": "units priced at the tier"},
        "charged_micro": {**_MICRO, "description": "domestic, taken at acceptance (net)"},
        "refund_micro": {**_MICRO, "description": "charged above the tier price, returned"},
        "refund_cash_micro": _nullable(
            {**_MICRO, "description": "the refund's part returned to cash (null while open)"}
        ),
        "refund_vouchers_micro": _nullable(
            {
                **_MICRO,
                "description": "the vouchers' share of the refund, returned to vouchers still "
                "valid at settlement (null while open)",
            }
        ),
        "refund_void_micro": _nullable(
            {
                **_MICRO,
                "description": "the share of vouchers expired by settlement: void (null while "
                "open)",
            }
        ),
        "invoice_total_micro": {
            **_MICRO,
            "description": "traffic sent while postpaid, rounded to whole fen",
        },
        "vouchers_used_micro": {
            **_MICRO,
            "description": "paid by vouchers in the month (net of message refunds, before the "
            "settlement's refund_vouchers_micro)",
        },
        "international_amount_micro": _MICRO,
        "international_charged_micro": _MICRO,
        "domestic": {
            "type": "array",
            "description": "per tariff version in force during the month",
            "items": _obj(
                {
                    "version": _STR,
                    "units": _COUNT,
                    "tier": {"type": "integer", "minimum": 1},
                    "price": {**_MICRO, "description": "micro per unit at the tier reached"},
                    "amount": _MICRO,
                }
            ),
        },
        "international": {
            "type": "array",
            "description": "per country prefix and price",
            "items": _obj(
                {
                    "country_prefix": _PREFIX,
                    "segments": _COUNT,
                    "price_micro": _MICRO,
                    "amount_micro": _MICRO,
                }
            ),
        },
        "status": {
            "type": "string",
            "enum": ["open", "settled"],
            "description": "open: the month so far (or not settled yet), computed the same way "
            "over the messages whose outcome is known",
        },
        "settled_at": _nullable(_MS),
        "period_start": {
            **_MS,
            "description": "the first instant the bill covers: the month's start in "
            "`timezone`, or where the account's bill for the month before ended (after a "
            "change of rules.timezone, so no message is billed twice or never)",
        },
        "period_end": {**_MS, "description": "the instant after the last one it covers"},
        "timezone": {"type": "string", "description": "rules.timezone the month was cut in"},
        "pending_messages_units": {
            **_COUNT,
            "description": "units of messages still awaiting their outcome, not priced yet "
            "(0 once settled)",
        },
    }


def rules_schemas() -> dict[str, Any]:
    balance = _balance_props()
    tariff = _tariff_props()
    payment_ref = {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "description": "the payment (or order, or promotion) this money names; recorded as the "
        "ledger entry's ref. Credited once per account: again with the same amount it is not "
        "credited again (200, duplicate_ref), so a retry after a lost answer is safe; with "
        "another amount or kind it is refused (409 PAYMENT_REF_REUSED)",
    }
    settled_line = _obj(
        {
            "account": _STR,
            "status": {"type": "string", "enum": ["settled", "already_settled"]},
            "units": _COUNT,
            "tier": {"type": "integer", "minimum": 1},
            "refund_micro": _MICRO,
            "refund_cash_micro": _nullable(_MICRO),
            "refund_vouchers_micro": _nullable(_MICRO),
            "refund_void_micro": _nullable(_MICRO),
            "invoice_total_micro": _MICRO,
        }
    )
    unsettled_line = _obj(
        {
            "account": _STR,
            "status": {
                "type": "string",
                "enum": ["not_ready", "error"],
                "description": "not_ready: some messages still await their outcome (retried by "
                "the automatic settlement); error: the message says why",
            },
            "message": _STR,
            "pending_messages": {
                **_COUNT,
                "description": "not_ready only: how many of the month's messages still await "
                "their outcome (queued, or sent and awaiting the final receipt)",
            },
        },
        required=["account", "status", "message"],
    )
    dnc = {
        "id": _STR,
        "name": _STR,
        "country": _nullable({"type": "string", "pattern": "^[A-Z]{2}$"}),
        "numbers": _COUNT,
        "prefixes": _COUNT,
        "imported_at": _MS,
    }
    sign_create = {
        "name": {"type": "string", "description": "2-12 letters/digits, no brackets"},
        "source": {"type": "string", "enum": list(SIGN_SOURCES), "default": "company"},
        "remark": {"type": "string", "maxLength": 500},
    }
    return {
        # -- signs and templates
        "SignCreate": _obj(sign_create, required=["name"]),
        "AdminSignCreate": _obj(
            {
                **sign_create,
                "approve": {"type": "boolean", "default": False, "description": "approve at once"},
            },
            required=["name"],
        ),
        "Sign": _obj(_sign_props(False)),
        "SignList": _obj({"signs": {"type": "array", "items": _schema("Sign")}}),
        "AdminSign": _obj(_sign_props(True)),
        "AdminSignList": _obj({"signs": {"type": "array", "items": _schema("AdminSign")}}),
        "TemplateCreate": _obj(
            {
                "type": {"type": "string", "enum": list(TEMPLATE_KINDS)},
                "name": {"type": "string", "minLength": 1, "maxLength": 64},
                "content": {
                    "type": "string",
                    "maxLength": 2000,
                    "description": "text with ${name} placeholders ([A-Za-z_][A-Za-z0-9_]{0,31})",
                },
                "remark": {"type": "string", "maxLength": 500},
                "allow_urls": {"type": "boolean", "default": False},
                "international": {"type": "boolean", "default": False},
            },
            required=["type", "name", "content"],
        ),
        "TemplateEdit": _obj(
            {
                "type": {"type": "string", "enum": list(TEMPLATE_KINDS)},
                "name": {"type": "string", "minLength": 1, "maxLength": 64},
                "content": {"type": "string", "maxLength": 2000},
                "remark": {"type": "string", "maxLength": 500},
                "allow_urls": {"type": "boolean"},
                "international": {"type": "boolean"},
            },
            required=[],
        )
        | {"minProperties": 1},
        "SignEdit": _obj(
            {
                "source": {"type": "string", "enum": list(SIGN_SOURCES)},
                "remark": {"type": "string", "maxLength": 500},
            },
            required=[],
        )
        | {"minProperties": 1},
        "Template": _obj(_template_props(False)),
        "TemplateList": _obj({"templates": {"type": "array", "items": _schema("Template")}}),
        "AdminTemplate": _obj(_template_props(True)),
        "AdminTemplateList": _obj(
            {"templates": {"type": "array", "items": _schema("AdminTemplate")}}
        ),
        "ReviewDecision": _obj(
            {
                "decision": {"type": "string", "enum": ["approve", "reject"]},
                "reason": {
                    "type": "string",
                    "maxLength": 500,
                    "description": "required when rejecting; shown to the customer",
                },
            },
            required=["decision"],
        ),
        "TemplateReviewDecision": _obj(
            {
                "decision": {"type": "string", "enum": ["approve", "reject"]},
                "reason": {
                    "type": "string",
                    "maxLength": 500,
                    "description": "required when rejecting; shown to the customer",
                },
                "revision": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "the revision the operator read: a template the customer "
                    "corrected since is refused (409 TEMPLATE_CHANGED), not decided unseen",
                },
            },
            required=["decision"],
        ),
        # -- opt-outs and erasure
        "OptOut": _obj(
            {
                "number": {
                    "type": "string",
                    "description": "E.164; from a reply (source mo), the sender as the SMSC "
                    "gave it when it is not an international number (national digits, or "
                    "letters: smscs[].national_prefix reads national ones into E.164)",
                },
                "source": {
                    "type": "string",
                    "enum": ["mo", "api"],
                    "description": "mo: the recipient replied an opt-out keyword",
                },
                "created_at": _MS,
            }
        ),
        "OptOutList": _obj(
            {
                "optouts": {"type": "array", "items": _schema("OptOut")},
                "next_cursor": _nullable(
                    {"type": "string", "description": "pass as cursor for the next page"}
                ),
            }
        ),
        "OptOutsAdd": _obj(
            {
                "numbers": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 10000,
                    "items": {"type": "string"},
                }
            }
        ),
        "OptOutsAdded": _obj(
            {
                "added": {**_COUNT, "description": "numbers not on the list before"},
                "numbers": {
                    "type": "array",
                    "items": _E164,
                    "description": "the numbers given, normalised, sorted, distinct",
                },
            }
        ),
        "OptOutRemoved": _obj({"number": _E164, "removed": {"type": "boolean", "enum": [True]}}),
        "SignDeleted": _obj(
            {
                "name": _STR,
                "deleted": {"type": "boolean", "enum": [True]},
                "messages_ended": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "its messages still waiting, ended unsent (SIGN_DELETED) "
                    "and refunded",
                },
            }
        ),
        "TemplateDeleted": _obj(
            {
                "code": _STR,
                "deleted": {"type": "boolean", "enum": [True]},
                "messages_ended": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "its messages still waiting, ended unsent (TEMPLATE_DELETED) "
                    "and refunded",
                },
            }
        ),
        "AdminOptOutRemoved": _obj(
            {
                "account_id": {"type": "string", "pattern": "^acc_[0-9A-Z]{26}$"},
                "number": _E164,
                "removed": {"type": "boolean", "enum": [True]},
                "source": {
                    "type": "string",
                    "enum": ["mo", "api"],
                    "description": "the removed entry's: mo when a recipient's reply is lifted",
                },
            }
        ),
        "Erased": _obj(
            {
                "number": {
                    "type": "string",
                    "pattern": r"^\+[0-9]{2}\*+$",
                    "description": "the number as the records now keep it (masked)",
                },
                "messages_erased": {**_COUNT, "description": "records masked, text removed"},
            }
        ),
        # -- money
        "Balance": _obj(
            {
                **balance,
                "account_kind": {"type": "string", "enum": ["prepaid", "postpaid"]},
                "low_balance_threshold_micro": {
                    **_COUNT,
                    "description": "a balance.low event fires once per dip below it (0 = off)",
                },
                "low_balance_warned_at": _nullable(
                    {
                        **_MS,
                        "description": "when the balance.low event of the current dip fired; "
                        "null when the account is not warned (at or above the threshold)",
                    }
                ),
            }
        ),
        "LedgerEntry": _obj(
            {
                "id": {"type": "integer", "minimum": 1},
                "kind": {"type": "string", "enum": [k.value for k in EntryKind]},
                "amount_micro": {**_MICRO, "description": "signed: + credits the pocket"},
                "pocket": {
                    "type": "string",
                    "pattern": "^(cash|invoice|voucher:.+|card:.+)$",
                },
                "at": _MS,
                "ref": _nullable(
                    {"type": "string", "description": "message id, month, voucher or card id"}
                ),
                "expires_at": _nullable(_MS),
            }
        ),
        "LedgerPage": _obj(
            {
                "entries": {"type": "array", "items": _schema("LedgerEntry")},
                "next_cursor": _nullable(
                    {
                        "type": "string",
                        "pattern": "^[0-9]+$",
                        "description": "pass as `after` for the next page; null when this page "
                        "was not full (a full last page yields one more, empty, page)",
                    }
                ),
            }
        ),
        # The period fields are absent from bills settled before bills recorded them.
        "Bill": _obj(
            _bill_props(),
            required=set(_bill_props()) - {"period_start", "period_end", "timezone"},
        ),
        # -- operator: do-not-contact lists
        "DncList": _obj(dnc),
        "DncLists": _obj({"lists": {"type": "array", "items": _schema("DncList")}}),
        "DncImported": _obj(
            {
                **dnc,
                "skipped": {
                    "type": "array",
                    "items": _STR,
                    "description": "`line N: reason` of the lines skipped (strict=false), at "
                    "most 100",
                },
                "messages_ended": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "queued and scheduled messages the list now blocks, ended "
                    "unsent (RECIPIENT_BLOCKED) and refunded",
                },
            }
        ),
        "DncDeleted": _obj({"id": _STR, "deleted": {"type": "boolean", "enum": [True]}}),
        # -- operator: tariffs
        "TariffCreate": _obj(tariff, required=["version", "effective_at"]),
        "Tariff": _obj({**tariff, "starting_price_display": _DECIMAL}),
        "TariffList": _obj(
            {
                "tariffs": {
                    "type": "array",
                    "items": _schema("Tariff"),
                    "description": "every version, by effective time",
                }
            }
        ),
        # -- operator: money movements
        "TopUp": _obj(
            {"amount_micro": {**_MICRO, "minimum": 1}, "ref": payment_ref},
            required=["amount_micro"],
        ),
        "VoucherGrant": _obj(
            {
                "amount_micro": {**_MICRO, "minimum": 1},
                "expires_at": _nullable(
                    {**_MS, "description": "after now; null or absent: never expires"}
                ),
                "ref": payment_ref,
            },
            required=["amount_micro"],
        ),
        "CardPurchase": _obj(
            {
                "face_value_micro": {
                    "type": "integer",
                    "enum": list(CARD_FACE_VALUES),
                    "description": "999, 1999 or 4999 CNY in micro-units; valid one calendar "
                    "year, international traffic only, non-refundable",
                },
                "ref": payment_ref,
            },
            required=["face_value_micro"],
        ),
        "MoneyAdded": _obj(
            {
                **balance,
                "added": {
                    "type": "array",
                    "description": "the ledger entries recorded",
                    "items": _obj(
                        {
                            "kind": {
                                "type": "string",
                                "enum": ["topup", "voucher_grant", "card_purchase"],
                            },
                            "amount_micro": {**_MICRO, "minimum": 1},
                            "pocket": _STR,
                            "ref": _nullable(
                                {
                                    "type": "string",
                                    "description": "the payment ref the entry was recorded "
                                    "under, else the voucher's or card's id (null: a top-up "
                                    "without a ref); as in the ledger",
                                }
                            ),
                            "expires_at": _nullable(_MS),
                        }
                    ),
                },
                "duplicate_ref": {
                    "type": "string",
                    "description": "this ref was credited before with the same amount: nothing "
                    "added (`added` is empty)",
                },
            },
            required=[*balance, "added"],
        ),
        "RefundPayment": _obj(
            {
                "amount_micro": {
                    **_MICRO,
                    "minimum": 1,
                    "description": "paid back: all or part of what is still owed, never more "
                    "(409 REFUND_NOT_OWED)",
                },
                "ref": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "description": "the payout's reference: recorded once (again with the same "
                    "amount: 200 duplicate_ref; with another, or naming money in: 409 "
                    "PAYMENT_REF_REUSED)",
                },
            }
        ),
        "RefundPaid": _obj(
            {
                "account": _STR,
                "currency": _STR,
                **_refund_props(),
                "added": {
                    "type": "array",
                    "description": "the ledger entry recorded (empty on a duplicate_ref)",
                    "items": _obj(
                        {
                            "kind": {"type": "string", "enum": ["refund_paid"]},
                            "amount_micro": {**_MICRO, "minimum": 1},
                            "pocket": {"type": "string", "enum": ["refunded"]},
                            "ref": _STR,
                            "expires_at": _nullable(_MS),
                        }
                    ),
                },
                "duplicate_ref": {
                    "type": "string",
                    "description": "this payout was recorded before, the same amount: nothing "
                    "recorded",
                },
            },
            required=["account", "currency", *_refund_props(), "added"],
        ),
        "ClosedAccount": _obj(
            {
                **_account_props(),
                "currency": _STR,
                **_refund_props(),
                "voided_micro": {
                    **_MICRO,
                    "minimum": 0,
                    "description": "vouchers' and cards' remainders this close made void "
                    "(non-refundable)",
                },
                "written_off": {
                    "type": "array",
                    "description": "the ledger entries this close recorded (none on a repeat)",
                    "items": _obj(
                        {
                            "kind": {
                                "type": "string",
                                "enum": [
                                    "closed",
                                    "voucher_void",
                                    "card_void",
                                    "voucher_expire",
                                    "card_expire",
                                ],
                            },
                            "amount_micro": {**_MICRO, "maximum": -1},
                            "pocket": _STR,
                            "ref": _nullable(_STR),
                            "expires_at": _nullable(_MS),
                        }
                    ),
                },
            }
        ),
        # -- operator: settlement
        "SettleRequest": _obj(
            {
                "month": _MONTH,
                "account": {"type": "string", "description": "account id or name; all if absent"},
            },
            required=["month"],
        ),
        "SettleResult": _obj(
            {
                "month": _MONTH,
                "results": {
                    "type": "array",
                    "description": "one per account",
                    "items": {"oneOf": [settled_line, unsettled_line]},
                },
            }
        ),
    }


# -- paths -----------------------------------------------------------------------------------------

_LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
_STATUS_Q = _query("status", {"type": "string", "enum": _REVIEW_STATES}, "only this status")
_ACCOUNT_Q = _query("account", _STR, "account id or name (404 if unknown)")
_DNC_CSV = """\
One entry per line; the first CSV column is the entry: an E.164 (or 00) number, a national number
of the `country` parameter, or a prefix with a trailing `*` (`+86138*`, at least 4 digits with the
country code). Blank lines and `#` comments are skipped, and so is a first line without a digit (a
header). The list replaces any list with the same id. With strict=true (the default) a bad line
refuses the whole import (400 INVALID_FIELD naming the lines); with strict=false bad lines are
skipped and listed in `skipped`."""


def _rules(op_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    tag = "billing" if op_id in ("getBalance", "getLedger", "getBill") else "rules"
    return _v1_op(op_id, summary, responses, tags=[tag], **extra)


def rules_paths() -> dict[str, Any]:
    ref = _path_param("ref", "account id or name")
    sign_name = _path_param("name", "the sign name (percent-encoded UTF-8)")
    code = _path_param("code", "template code (SMS_ + 9 digits)")
    number = _path_param("number", "E.164 (send + as %2B) or a national number")
    month = _path_param(
        "month", "YYYY-MM from 1970-01 to 9998-12, in the deployment's time zone (rules.timezone)"
    )
    bill_errors = (400, 409, 422, 503)
    # Top-ups, vouchers and cards alike: 409 ACCOUNT_CLOSED (a closed account takes no money)
    # and PAYMENT_REF_REUSED (a ref the account has, with another amount).
    money_responses = {
        "201": _ok("MoneyAdded", "recorded"),
        "200": _ok("MoneyAdded", "this ref was credited before, the same amount: nothing added"),
        **_errors(400, 404, 409, 415),
    }
    return {
        # -- customer: signs and templates
        "/v1/signs": {
            "post": _rules(
                "createSign",
                "Register a sign name; pending until an operator approves it",
                {"201": _ok("Sign", "registered, pending review"), **_errors(400, 409, 415)},
                requestBody=_json_body("SignCreate"),
            ),
            "get": _rules(
                "listSigns",
                "The account's sign names with their review status (no query parameters)",
                {"200": _ok("SignList", "every sign of the account"), **_errors(400)},
            ),
        },
        "/v1/signs/{name}": {
            "parameters": [sign_name],
            "get": _rules(
                "getSign",
                "One sign name, its status and the reason of a rejection",
                {"200": _ok("Sign", "the sign"), **_errors(404)},
            ),
            "patch": _rules(
                "editSign",
                "Correct a rejected sign name's source or remark (the name itself is what was "
                "reviewed: a new name is a new submission); it is pending review again",
                {"200": _ok("Sign", "corrected, pending review"), **_errors(400, 404, 409, 415)},
                requestBody=_json_body("SignEdit"),
            ),
            "delete": _rules(
                "deleteSign",
                "Delete a sign name; its messages still waiting (queued, scheduled) end unsent "
                "and refunded, those on a bind finish; the name is free to register again",
                {"200": _ok("SignDeleted", "deleted"), **_errors(404)},
            ),
        },
        "/v1/templates": {
            "post": _rules(
                "createTemplate",
                "Submit a template; reviewed automatically, then by an operator",
                {
                    "201": _ok(
                        "Template",
                        "stored: pending, or rejected by the automatic review (reason says why)",
                    ),
                    **_errors(400, 415),
                },
                requestBody=_json_body("TemplateCreate"),
            ),
            "get": _rules(
                "listTemplates",
                "The account's templates, oldest first",
                {"200": _ok("TemplateList", "the templates"), **_errors(400)},
                parameters=[
                    _STATUS_Q,
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 5000, "default": 500},
                        "rows to return",
                    ),
                ],
            ),
        },
        "/v1/templates/{code}": {
            "parameters": [code],
            "get": _rules(
                "getTemplate",
                "One template with its status and the reason of a rejection",
                {"200": _ok("Template", "the template"), **_errors(404)},
            ),
            "patch": _rules(
                "editTemplate",
                "Correct a rejected template under the same code: the fields given replace the "
                "stored ones, the automatic review runs again, and the revision counts one more; "
                "an approved or pending one is refused (409 TEMPLATE_NOT_EDITABLE)",
                {
                    "200": _ok(
                        "Template",
                        "corrected: pending, or rejected again by the automatic review",
                    ),
                    **_errors(400, 404, 409, 415),
                },
                requestBody=_json_body("TemplateEdit"),
            ),
            "delete": _rules(
                "deleteTemplate",
                "Delete a template; its messages still waiting (queued, scheduled) end unsent "
                "and refunded, those on a bind finish; sent ones keep its code in reports",
                {"200": _ok("TemplateDeleted", "deleted"), **_errors(404)},
            ),
        },
        # -- customer: opt-outs and erasure
        "/v1/optouts": {
            "get": _rules(
                "listOptOuts",
                "The account's opt-out list, by number",
                {"200": _ok("OptOutList", "one page"), **_errors(400)},
                parameters=[
                    _query(
                        "cursor",
                        {"type": "string", "pattern": "^(\\+?[0-9]{1,20}|x[A-Za-z0-9_-]{2,})?$"},
                        "next_cursor of the previous page (a number of the list, or x and a "
                        "base64url form for a reply sender that is not digits); empty or "
                        "absent: the first page; anything else is 400 INVALID_CURSOR",
                    ),
                    _query("limit", _LIMIT, "rows to return"),
                ],
            ),
            "post": _rules(
                "addOptOuts",
                "Add numbers to the opt-out list (sends to them: 422 RECIPIENT_OPTED_OUT)",
                {"200": _ok("OptOutsAdded", "added"), **_errors(400, 415)},
                requestBody=_json_body("OptOutsAdd"),
            ),
        },
        "/v1/optouts/{number}": {
            "parameters": [number],
            "delete": _rules(
                "removeOptOut",
                "Take a number the account added (source api) off the opt-out list; a "
                "recipient's own opt-out (source mo) is 409 OPTOUT_BY_RECIPIENT: only an "
                "operator can lift it",
                {"200": _ok("OptOutRemoved", "removed"), **_errors(400, 404, 409)},
            ),
        },
        "/v1/recipients/{number}/erase": {
            "parameters": [number],
            "post": _rules(
                "eraseRecipient",
                "Mask the number and remove the texts in the account's records (billing kept)",
                {
                    "200": _ok("Erased", "erased; queued messages to it are not sent"),
                    **_errors(400),
                },
            ),
        },
        # -- customer: money
        "/v1/balance": {
            "get": _rules(
                "getBalance",
                "Cash, vouchers and stored-value cards",
                {"200": _ok("Balance", "the balance now")},
            ),
        },
        "/v1/ledger": {
            "get": _rules(
                "getLedger",
                "The account's ledger entries, oldest first, by cursor",
                {"200": _ok("LedgerPage", "one page"), **_errors(400)},
                parameters=[
                    _query(
                        "after",
                        {"type": "string", "pattern": "^([0-9]{1,18})?$", "default": "0"},
                        "next_cursor of the previous page (an entry id); empty: the first page",
                    ),
                    _query(
                        "cursor",
                        {"type": "string", "pattern": "^([0-9]{1,18})?$"},
                        "the same as after, under the name the other list endpoints use",
                    ),
                    _query("limit", _LIMIT, "rows to return"),
                ],
            ),
        },
        "/v1/bills/{month}": {
            "parameters": [month],
            "get": _rules(
                "getBill",
                "The month's bill: units, tier, price, charged, refund, vouchers, international",
                {
                    "200": _ok("Bill", "the settled bill, or the month so far (open)"),
                    **_errors(*bill_errors),
                },
            ),
        },
        # -- operator: review
        "/admin/signs": {
            "get": _admin_op(
                "adminListSigns",
                "Sign names of every account (or one), with impersonation flags",
                {"200": _ok("AdminSignList", "the signs"), **_errors(400, 404)},
                parameters=[_ACCOUNT_Q, _STATUS_Q],
            ),
        },
        "/admin/accounts/{ref}/signs": {
            "parameters": [ref],
            "post": _admin_op(
                "adminAddSign",
                "Register a sign name for an account (approved at once with approve: true)",
                {"201": _ok("AdminSign", "registered"), **_errors(400, 404, 409, 415)},
                requestBody=_json_body("AdminSignCreate"),
            ),
        },
        "/admin/accounts/{ref}/signs/{name}/review": {
            "parameters": [ref, sign_name],
            "post": _admin_op(
                "reviewSign",
                "Approve or reject a sign name (a reason is required to reject)",
                {"200": _ok("AdminSign", "decided"), **_errors(400, 404, 409, 415)},
                requestBody=_json_body("ReviewDecision"),
            ),
        },
        "/admin/templates": {
            "get": _admin_op(
                "adminListTemplates",
                "Templates of every account (or one), oldest first",
                {"200": _ok("AdminTemplateList", "the templates"), **_errors(400, 404)},
                parameters=[_ACCOUNT_Q, _STATUS_Q],
            ),
        },
        "/admin/templates/{code}/review": {
            "parameters": [code],
            "post": _admin_op(
                "reviewTemplate",
                "Approve or reject a template; one the automatic review rejected cannot be "
                "approved (400 INVALID_REQUEST); with `revision`, one corrected since is "
                "refused (409 TEMPLATE_CHANGED)",
                {"200": _ok("AdminTemplate", "decided"), **_errors(400, 404, 409, 415)},
                requestBody=_json_body("TemplateReviewDecision"),
            ),
        },
        # -- operator: opt-outs
        "/admin/accounts/{ref}/optouts/{number}": {
            "parameters": [ref, number],
            "delete": _admin_op(
                "adminRemoveOptOut",
                "Lift an account's opt-out whatever its source, a recipient's reply (mo) "
                "included; logged with the account, the masked number and the source",
                {"200": _ok("AdminOptOutRemoved", "removed"), **_errors(400, 404)},
            ),
        },
        # -- operator: do-not-contact lists
        "/admin/dnc": {
            "get": _admin_op(
                "listDnc",
                "Do-not-contact lists (they block every account)",
                {"200": _ok("DncLists", "the lists")},
            ),
        },
        "/admin/dnc/{id}": {
            "parameters": [_path_param("id", "list id: 1-64 of A-Z a-z 0-9 _ . -")],
            "put": _admin_op(
                "putDnc",
                "Import (replace) a do-not-contact list from CSV; 409 DNC_IMPORT_SUPERSEDED when "
                "the list was imported again or deleted while this import ran (SQLite)",
                {"200": _ok("DncImported", "imported"), **_errors(400, 409, 415)},
                parameters=[
                    _query(
                        "country",
                        {"type": "string", "pattern": "^[A-Z]{2}$"},
                        "ISO 3166 alpha-2: the country of national numbers in the list",
                    ),
                    _query("name", {"type": "string", "maxLength": 200}, "default: the id"),
                    _query(
                        "strict",
                        {"type": "string", "enum": ["true", "false"], "default": "true"},
                        "false: skip bad lines instead of refusing the import",
                    ),
                ],
                requestBody={
                    "required": True,
                    "description": _DNC_CSV,
                    "content": {
                        "text/csv": {"schema": {"type": "string"}},
                        "text/plain": {"schema": {"type": "string"}},
                    },
                },
            ),
            "delete": _admin_op(
                "deleteDnc",
                "Delete a do-not-contact list",
                {"200": _ok("DncDeleted", "deleted"), **_errors(404)},
            ),
        },
        # -- operator: tariffs
        "/admin/tariffs": {
            "get": _admin_op(
                "listTariffs",
                "Every tariff version (the configured one is stored first if none is)",
                {"200": _ok("TariffList", "the versions")},
            ),
            "post": _admin_op(
                "addTariff",
                "Add a tariff version; versions are never edited",
                {
                    "201": _ok("Tariff", "added"),
                    **_errors(400, 409, 415),
                },
                requestBody=_json_body("TariffCreate"),
            ),
        },
        # -- operator: money
        "/admin/accounts/{ref}/balance": {
            "parameters": [ref],
            "get": _admin_op(
                "adminGetBalance",
                "An account's balance",
                {"200": _ok("Balance", "the balance now"), **_errors(404)},
            ),
        },
        "/admin/accounts/{ref}/topups": {
            "parameters": [ref],
            "post": _admin_op(
                "topUp",
                "Add cash (a payment received)",
                money_responses,
                requestBody=_json_body("TopUp"),
            ),
        },
        "/admin/accounts/{ref}/vouchers": {
            "parameters": [ref],
            "post": _admin_op(
                "grantVoucher",
                "Grant a voucher (spent before cash while valid)",
                money_responses,
                requestBody=_json_body("VoucherGrant"),
            ),
        },
        "/admin/accounts/{ref}/cards": {
            "parameters": [ref],
            "post": _admin_op(
                "purchaseCard",
                "Record a stored-value card purchase (international traffic only)",
                money_responses,
                requestBody=_json_body("CardPurchase"),
            ),
        },
        "/admin/accounts/{ref}/bills/{month}": {
            "parameters": [ref, month],
            "get": _admin_op(
                "adminGetBill",
                "An account's bill for a month (settled, or the month so far)",
                {"200": _ok("Bill", "the bill"), **_errors(404, *bill_errors)},
            ),
        },
        "/admin/bills/settle": {
            "post": _admin_op(
                "settleBills",
                "Settle a month that is over, for one account or all; idempotent",
                {
                    "200": _ok("SettleResult", "one result per account"),
                    **_errors(400, 404, 409, 415),
                },
                requestBody=_json_body("SettleRequest"),
            ),
        },
        "/admin/accounts/{ref}/close": {
            "parameters": [ref],
            "post": _admin_op(
                "closeAccount",
                "Close an account: keys revoked, numbers masked, texts and opt-outs removed, "
                "waiting messages ended and refunded, and what its pockets hold written off "
                "(cash owed back to the customer, vouchers and cards void)",
                {
                    "200": _ok("ClosedAccount", "the closed account and the money it held"),
                    **_errors(404),
                },
            ),
        },
        "/admin/accounts/{ref}/refunds": {
            "parameters": [ref],
            "post": _admin_op(
                "payRefund",
                "Record a closed account's refund as paid back (all or part of what is still "
                "owed), under the payout's ref: a `refund_paid` ledger entry",
                {
                    "201": _ok("RefundPaid", "recorded"),
                    "200": _ok("RefundPaid", "this payout was recorded before: nothing added"),
                    **_errors(400, 404, 409, 415),
                },
                requestBody=_json_body("RefundPayment"),
            ),
        },
    }


__all__ = ["RULES_TAGS", "rules_paths", "rules_schemas"]
