"""SMPP 3.4 numbers: command ids, command statuses, TLV tags, esm_class bits.

Written out by hand rather than generated from ``smpplib.consts`` so that linters and readers see
every name; ``tests/unit/test_smpp_codec.py`` checks each value against smpplib's table.
"""

from __future__ import annotations

from typing import Final, Literal

# --- command ids (SMPP 3.4 section 5.1.2.1) -------------------------------------------------------
RESP_BIT: Final = 0x80000000

GENERIC_NACK: Final = 0x80000000
BIND_RECEIVER: Final = 0x00000001
BIND_RECEIVER_RESP: Final = 0x80000001
BIND_TRANSMITTER: Final = 0x00000002
BIND_TRANSMITTER_RESP: Final = 0x80000002
QUERY_SM: Final = 0x00000003
QUERY_SM_RESP: Final = 0x80000003
SUBMIT_SM: Final = 0x00000004
SUBMIT_SM_RESP: Final = 0x80000004
DELIVER_SM: Final = 0x00000005
DELIVER_SM_RESP: Final = 0x80000005
UNBIND: Final = 0x00000006
UNBIND_RESP: Final = 0x80000006
REPLACE_SM: Final = 0x00000007
REPLACE_SM_RESP: Final = 0x80000007
CANCEL_SM: Final = 0x00000008
CANCEL_SM_RESP: Final = 0x80000008
BIND_TRANSCEIVER: Final = 0x00000009
BIND_TRANSCEIVER_RESP: Final = 0x80000009
OUTBIND: Final = 0x0000000B
ENQUIRE_LINK: Final = 0x00000015
ENQUIRE_LINK_RESP: Final = 0x80000015
SUBMIT_MULTI: Final = 0x00000021
SUBMIT_MULTI_RESP: Final = 0x80000021
ALERT_NOTIFICATION: Final = 0x00000102
DATA_SM: Final = 0x00000103
DATA_SM_RESP: Final = 0x80000103

COMMAND_NAMES: Final[dict[int, str]] = {
    GENERIC_NACK: "generic_nack",
    BIND_RECEIVER: "bind_receiver",
    BIND_RECEIVER_RESP: "bind_receiver_resp",
    BIND_TRANSMITTER: "bind_transmitter",
    BIND_TRANSMITTER_RESP: "bind_transmitter_resp",
    QUERY_SM: "query_sm",
    QUERY_SM_RESP: "query_sm_resp",
    SUBMIT_SM: "submit_sm",
    SUBMIT_SM_RESP: "submit_sm_resp",
    DELIVER_SM: "deliver_sm",
    DELIVER_SM_RESP: "deliver_sm_resp",
    UNBIND: "unbind",
    UNBIND_RESP: "unbind_resp",
    REPLACE_SM: "replace_sm",
    REPLACE_SM_RESP: "replace_sm_resp",
    CANCEL_SM: "cancel_sm",
    CANCEL_SM_RESP: "cancel_sm_resp",
    BIND_TRANSCEIVER: "bind_transceiver",
    BIND_TRANSCEIVER_RESP: "bind_transceiver_resp",
    OUTBIND: "outbind",
    ENQUIRE_LINK: "enquire_link",
    ENQUIRE_LINK_RESP: "enquire_link_resp",
    SUBMIT_MULTI: "submit_multi",
    SUBMIT_MULTI_RESP: "submit_multi_resp",
    ALERT_NOTIFICATION: "alert_notification",
    DATA_SM: "data_sm",
    DATA_SM_RESP: "data_sm_resp",
}

BIND_COMMANDS: Final = frozenset({BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER})
BIND_RESP_COMMANDS: Final = frozenset(
    {BIND_RECEIVER_RESP, BIND_TRANSMITTER_RESP, BIND_TRANSCEIVER_RESP}
)


def command_name(cid: int) -> str:
    """``"submit_sm"`` for 4; ``"0x%08X"`` for ids SMPP 3.4 does not define (never raises)."""
    name = COMMAND_NAMES.get(cid)
    return name if name is not None else f"0x{cid & 0xFFFFFFFF:08X}"


def is_response(cid: int) -> bool:
    return bool(cid & RESP_BIT)


# --- command_status (SMPP 3.4 section 5.1.3) ------------------------------------------------------
ESME_ROK: Final = 0x00000000
ESME_RINVMSGLEN: Final = 0x00000001
ESME_RINVCMDLEN: Final = 0x00000002
ESME_RINVCMDID: Final = 0x00000003
ESME_RINVBNDSTS: Final = 0x00000004
ESME_RALYBND: Final = 0x00000005
ESME_RINVPRTFLG: Final = 0x00000006
ESME_RINVREGDLVFLG: Final = 0x00000007
ESME_RSYSERR: Final = 0x00000008
ESME_RINVSRCADR: Final = 0x0000000A
ESME_RINVDSTADR: Final = 0x0000000B
ESME_RINVMSGID: Final = 0x0000000C
ESME_RBINDFAIL: Final = 0x0000000D
ESME_RINVPASWD: Final = 0x0000000E
ESME_RINVSYSID: Final = 0x0000000F
ESME_RCANCELFAIL: Final = 0x00000011
ESME_RREPLACEFAIL: Final = 0x00000013
ESME_RMSGQFUL: Final = 0x00000014
ESME_RINVSERTYP: Final = 0x00000015
ESME_RINVNUMDESTS: Final = 0x00000033
ESME_RINVDLNAME: Final = 0x00000034
ESME_RINVDESTFLAG: Final = 0x00000040
ESME_RINVSUBREP: Final = 0x00000042
ESME_RINVESMCLASS: Final = 0x00000043
ESME_RCNTSUBDL: Final = 0x00000044
ESME_RSUBMITFAIL: Final = 0x00000045
ESME_RINVSRCTON: Final = 0x00000048
ESME_RINVSRCNPI: Final = 0x00000049
ESME_RINVDSTTON: Final = 0x00000050
ESME_RINVDSTNPI: Final = 0x00000051
ESME_RINVSYSTYP: Final = 0x00000053
ESME_RINVREPFLAG: Final = 0x00000054
ESME_RINVNUMMSGS: Final = 0x00000055
ESME_RTHROTTLED: Final = 0x00000058
ESME_RINVSCHED: Final = 0x00000061
ESME_RINVEXPIRY: Final = 0x00000062
ESME_RINVDFTMSGID: Final = 0x00000063
ESME_RX_T_APPN: Final = 0x00000064
ESME_RX_P_APPN: Final = 0x00000065
ESME_RX_R_APPN: Final = 0x00000066
ESME_RQUERYFAIL: Final = 0x00000067
ESME_RINVOPTPARSTREAM: Final = 0x000000C0
ESME_ROPTPARNOTALLWD: Final = 0x000000C1
ESME_RINVPARLEN: Final = 0x000000C2
ESME_RMISSINGOPTPARAM: Final = 0x000000C3
ESME_RINVOPTPARAMVAL: Final = 0x000000C4
ESME_RDELIVERYFAILURE: Final = 0x000000FE
ESME_RUNKNOWNERR: Final = 0x000000FF
# SMPP 5.0 additions. Not in 3.4, but SMSCs return them on 3.4 binds (ESME_RINVDCS above all), so
# they get names rather than "0x00000104" in a failed segment's record.
ESME_RSERTYPUNAUTH: Final = 0x00000100
ESME_RPROHIBITED: Final = 0x00000101
ESME_RSERTYPUNAVAIL: Final = 0x00000102
ESME_RSERTYPDENIED: Final = 0x00000103
ESME_RINVDCS: Final = 0x00000104
ESME_RINVSRCADDRSUBUNIT: Final = 0x00000105
ESME_RINVDSTADDRSUBUNIT: Final = 0x00000106
ESME_RINVBCASTFREQINT: Final = 0x00000107
ESME_RINVBCASTALIAS_NAME: Final = 0x00000108
ESME_RINVBCASTAREAFMT: Final = 0x00000109
ESME_RINVNUMBCAST_AREAS: Final = 0x0000010A
ESME_RINVBCASTCNTTYPE: Final = 0x0000010B
ESME_RINVBCASTMSGCLASS: Final = 0x0000010C
ESME_RBCASTFAIL: Final = 0x0000010D
ESME_RBCASTQUERYFAIL: Final = 0x0000010E
ESME_RBCASTCANCELFAIL: Final = 0x0000010F
ESME_RINVBCAST_REP: Final = 0x00000110
ESME_RINVBCASTSRVGRP: Final = 0x00000111
ESME_RINVBCASTCHANIND: Final = 0x00000112

STATUS_NAMES: Final[dict[int, str]] = {
    value: name
    for name, value in sorted(globals().items())
    if name.startswith("ESME_R") and isinstance(value, int)
}

# SMPP 3.4 reserves 0x400-0x4FF for SMSC vendor-specific errors.
VENDOR_STATUS_MIN: Final = 0x00000400
VENDOR_STATUS_MAX: Final = 0x000004FF


def status_name(code: int) -> str:
    """``"ESME_RINVDSTADR"`` for 0x0B; ``"0x%08X"`` for codes outside the SMPP 3.4 table.

    The name is what a failed segment records, so it must be stable and never raise.
    """
    name = STATUS_NAMES.get(code)
    return name if name is not None else f"0x{code & 0xFFFFFFFF:08X}"


SubmitOutcome = Literal["ok", "transient", "permanent", "throttled"]

THROTTLED_STATUSES: Final = frozenset({ESME_RTHROTTLED, ESME_RMSGQFUL})

# Retried (bounded) because resending the same submit_sm later, or on another bind, can succeed:
# - RSYSERR, RX_T_APPN, RUNKNOWNERR, RSUBMITFAIL: the SMSC's own generic "try again" family.
# - RINVBNDSTS: the SMSC thinks our bind is in the wrong state (it restarted, or half-closed the
#   session); the message is fine, the bind is not, and a rebind fixes it.
# - RDELIVERYFAILURE: defined for data_sm; SMSCs that return it on submit_sm mean a failed
#   onward delivery attempt, which is usually temporary.
# - RSERTYPUNAVAIL (SMPP 5.0): "service_type is unavailable", an outage rather than a refusal
#   (contrast RSERTYPUNAUTH / RSERTYPDENIED, which are permanent).
# Everything else, including vendor-specific codes (0x400-0x4FF) and codes outside the table, is
# permanent: a retry of the same bytes gets the same refusal, and a per-SMSC override belongs in the
# connector's configuration, not in the codec.
TRANSIENT_STATUSES: Final = frozenset(
    {
        ESME_RSYSERR,
        ESME_RX_T_APPN,
        ESME_RUNKNOWNERR,
        ESME_RSUBMITFAIL,
        ESME_RINVBNDSTS,
        ESME_RDELIVERYFAILURE,
        ESME_RSERTYPUNAVAIL,
    }
)


def classify_submit_status(code: int) -> SubmitOutcome:
    """Bucket a submit_sm_resp status for the connector's retry policy (see TRANSIENT_STATUSES)."""
    if code == ESME_ROK:
        return "ok"
    if code in THROTTLED_STATUSES:
        return "throttled"
    if code in TRANSIENT_STATUSES:
        return "transient"
    return "permanent"


# --- TLV tags (SMPP 3.4 section 5.3.2) ------------------------------------------------------------
DEST_ADDR_SUBUNIT: Final = 0x0005
DEST_NETWORK_TYPE: Final = 0x0006
DEST_BEARER_TYPE: Final = 0x0007
DEST_TELEMATICS_ID: Final = 0x0008
SOURCE_ADDR_SUBUNIT: Final = 0x000D
SOURCE_NETWORK_TYPE: Final = 0x000E
SOURCE_BEARER_TYPE: Final = 0x000F
SOURCE_TELEMATICS_ID: Final = 0x0010
QOS_TIME_TO_LIVE: Final = 0x0017
PAYLOAD_TYPE: Final = 0x0019
ADDITIONAL_STATUS_INFO_TEXT: Final = 0x001D
RECEIPTED_MESSAGE_ID: Final = 0x001E
MS_MSG_WAIT_FACILITIES: Final = 0x0030
PRIVACY_INDICATOR: Final = 0x0201
SOURCE_SUBADDRESS: Final = 0x0202
DEST_SUBADDRESS: Final = 0x0203
USER_MESSAGE_REFERENCE: Final = 0x0204
USER_RESPONSE_CODE: Final = 0x0205
SOURCE_PORT: Final = 0x020A
DESTINATION_PORT: Final = 0x020B
DEST_PORT: Final = DESTINATION_PORT
SAR_MSG_REF_NUM: Final = 0x020C
LANGUAGE_INDICATOR: Final = 0x020D
SAR_TOTAL_SEGMENTS: Final = 0x020E
SAR_SEGMENT_SEQNUM: Final = 0x020F
SC_INTERFACE_VERSION: Final = 0x0210
CALLBACK_NUM_PRES_IND: Final = 0x0302
CALLBACK_NUM_ATAG: Final = 0x0303
NUMBER_OF_MESSAGES: Final = 0x0304
CALLBACK_NUM: Final = 0x0381
DPF_RESULT: Final = 0x0420
SET_DPF: Final = 0x0421
MS_AVAILABILITY_STATUS: Final = 0x0422
NETWORK_ERROR_CODE: Final = 0x0423
MESSAGE_PAYLOAD: Final = 0x0424
DELIVERY_FAILURE_REASON: Final = 0x0425
MORE_MESSAGES_TO_SEND: Final = 0x0426
MESSAGE_STATE: Final = 0x0427
USSD_SERVICE_OP: Final = 0x0501
DISPLAY_TIME: Final = 0x1201
SMS_SIGNAL: Final = 0x1203
MS_VALIDITY: Final = 0x1204
ALERT_ON_MESSAGE_DELIVERY: Final = 0x130C
ITS_REPLY_TYPE: Final = 0x1380
ITS_SESSION_INFO: Final = 0x1383

TLV_NAMES: Final[dict[int, str]] = {
    DEST_ADDR_SUBUNIT: "dest_addr_subunit",
    DEST_NETWORK_TYPE: "dest_network_type",
    DEST_BEARER_TYPE: "dest_bearer_type",
    DEST_TELEMATICS_ID: "dest_telematics_id",
    SOURCE_ADDR_SUBUNIT: "source_addr_subunit",
    SOURCE_NETWORK_TYPE: "source_network_type",
    SOURCE_BEARER_TYPE: "source_bearer_type",
    SOURCE_TELEMATICS_ID: "source_telematics_id",
    QOS_TIME_TO_LIVE: "qos_time_to_live",
    PAYLOAD_TYPE: "payload_type",
    ADDITIONAL_STATUS_INFO_TEXT: "additional_status_info_text",
    RECEIPTED_MESSAGE_ID: "receipted_message_id",
    MS_MSG_WAIT_FACILITIES: "ms_msg_wait_facilities",
    PRIVACY_INDICATOR: "privacy_indicator",
    SOURCE_SUBADDRESS: "source_subaddress",
    DEST_SUBADDRESS: "dest_subaddress",
    USER_MESSAGE_REFERENCE: "user_message_reference",
    USER_RESPONSE_CODE: "user_response_code",
    SOURCE_PORT: "source_port",
    DESTINATION_PORT: "destination_port",
    SAR_MSG_REF_NUM: "sar_msg_ref_num",
    LANGUAGE_INDICATOR: "language_indicator",
    SAR_TOTAL_SEGMENTS: "sar_total_segments",
    SAR_SEGMENT_SEQNUM: "sar_segment_seqnum",
    SC_INTERFACE_VERSION: "sc_interface_version",
    CALLBACK_NUM_PRES_IND: "callback_num_pres_ind",
    CALLBACK_NUM_ATAG: "callback_num_atag",
    NUMBER_OF_MESSAGES: "number_of_messages",
    CALLBACK_NUM: "callback_num",
    DPF_RESULT: "dpf_result",
    SET_DPF: "set_dpf",
    MS_AVAILABILITY_STATUS: "ms_availability_status",
    NETWORK_ERROR_CODE: "network_error_code",
    MESSAGE_PAYLOAD: "message_payload",
    DELIVERY_FAILURE_REASON: "delivery_failure_reason",
    MORE_MESSAGES_TO_SEND: "more_messages_to_send",
    MESSAGE_STATE: "message_state",
    USSD_SERVICE_OP: "ussd_service_op",
    DISPLAY_TIME: "display_time",
    SMS_SIGNAL: "sms_signal",
    MS_VALIDITY: "ms_validity",
    ALERT_ON_MESSAGE_DELIVERY: "alert_on_message_delivery",
    ITS_REPLY_TYPE: "its_reply_type",
    ITS_SESSION_INFO: "its_session_info",
}


def tlv_name(tag: int) -> str:
    name = TLV_NAMES.get(tag)
    return name if name is not None else f"0x{tag & 0xFFFF:04X}"


# --- esm_class (SMPP 3.4 section 5.2.12) ----------------------------------------------------------
ESM_MODE_MASK: Final = 0x03
ESM_MODE_DEFAULT: Final = 0x00
ESM_MODE_DATAGRAM: Final = 0x01
ESM_MODE_FORWARD: Final = 0x02
ESM_MODE_STORE_FORWARD: Final = 0x03
# Message type, bits 2-5. Trap: smpplib's SMPP_MSGTYPE_DELIVERYACK is 0x08 (an SME delivery
# acknowledgement); the SMSC delivery receipt is 0x04.
ESM_MSG_TYPE_MASK: Final = 0x3C
ESM_DEFAULT: Final = 0x00
ESM_DELIVERY_RECEIPT: Final = 0x04
ESM_DELIVERY_ACK: Final = 0x08
ESM_USER_ACK: Final = 0x10
ESM_CONVERSATION_ABORT: Final = 0x18
ESM_INTERMEDIATE_NOTIFICATION: Final = 0x20
# GSM network features, bits 6-7.
ESM_UDHI: Final = 0x40
ESM_REPLY_PATH: Final = 0x80


def is_delivery_receipt(esm_class: int) -> bool:
    """True for an SMSC delivery receipt (message type bits == 0x04), whatever the other bits."""
    return (esm_class & ESM_MSG_TYPE_MASK) == ESM_DELIVERY_RECEIPT


def is_intermediate_notification(esm_class: int) -> bool:
    return (esm_class & ESM_MSG_TYPE_MASK) == ESM_INTERMEDIATE_NOTIFICATION


# --- registered_delivery (SMPP 3.4 section 5.2.17) ------------------------------------------------
REG_DELIVERY_NONE: Final = 0x00
REG_DELIVERY_ALWAYS: Final = 0x01
REG_DELIVERY_ON_FAILURE: Final = 0x02
REG_DELIVERY_INTERMEDIATE: Final = 0x10

# --- message_state TLV values (SMPP 3.4 section 5.2.28) -------------------------------------------
MSG_STATE_ENROUTE: Final = 1
MSG_STATE_DELIVERED: Final = 2
MSG_STATE_EXPIRED: Final = 3
MSG_STATE_DELETED: Final = 4
MSG_STATE_UNDELIVERABLE: Final = 5
MSG_STATE_ACCEPTED: Final = 6
MSG_STATE_UNKNOWN: Final = 7
MSG_STATE_REJECTED: Final = 8

# --- data_coding (SMPP 3.4 section 5.2.19), the values the bridge uses ----------------------------
DC_DEFAULT: Final = 0x00
DC_IA5: Final = 0x01
DC_BINARY: Final = 0x02
DC_LATIN1: Final = 0x03
DC_BINARY2: Final = 0x04
DC_UCS2: Final = 0x08

INTERFACE_VERSION_33: Final = 0x33
INTERFACE_VERSION_34: Final = 0x34
