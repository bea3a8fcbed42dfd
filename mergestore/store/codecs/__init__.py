"""Block codecs: self-describing chains of small registered stages (zarr-v3 style).

The store calls `encode_block` on each raw block and records `Encoded.spec` in the index;
`decode_block(spec, payload)` gives back the exact raw bytes. All functions are thread-safe.
"""

from .chain import (
    Encoded,
    decode_block,
    decode_block_into,
    spec_codec_names,
    spec_uses_reference,
)
from .choose import encode_block
from .registry import CODECS, parse_spec

__all__ = [
    "CODECS",
    "Encoded",
    "decode_block",
    "decode_block_into",
    "encode_block",
    "parse_spec",
    "spec_codec_names",
    "spec_uses_reference",
]
