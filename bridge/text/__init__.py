"""Pure text engine: GSM 03.38 codec, encoding choice, splitting, unit counting, preview."""

from bridge.text.gsm import (
    gsm_decode,
    gsm_encode,
    is_gsm_char,
    pack_septets,
    septet_count,
    unpack_septets,
)
from bridge.text.preview import preview
from bridge.text.smart import smart_map
from bridge.text.split import (
    EncodedMessage,
    EncodeOptions,
    Encoding,
    Part,
    RefCounter,
    SplitMode,
    TextError,
    choose_encoding,
    encode_message,
)
from bridge.text.units import CountingRule, billable_units, tariff_chars

__all__ = [
    "CountingRule",
    "EncodeOptions",
    "EncodedMessage",
    "Encoding",
    "Part",
    "RefCounter",
    "SplitMode",
    "TextError",
    "billable_units",
    "choose_encoding",
    "encode_message",
    "gsm_decode",
    "gsm_encode",
    "is_gsm_char",
    "pack_septets",
    "preview",
    "septet_count",
    "smart_map",
    "tariff_chars",
    "unpack_septets",
]
