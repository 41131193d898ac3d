"""Outbound signing: DKIM signatures, ARC sets, SRS envelope rewriting, and the
keys they use. Pure code: no database, no DNS, no I/O."""

from mta.signing.arc import ArcSealError, seal_arc
from mta.signing.dkim import DkimSignError, normalize_line_endings, sign_dkim, sign_message
from mta.signing.keys import (
    KeyDecryptionError,
    KeyVault,
    SigningKey,
    decrypt_private_key,
    dns_txt_value,
    encrypt_private_key,
    generate_signing_key,
    load_private_key,
)
from mta.signing.srs import (
    Srs,
    SrsBadHash,
    SrsError,
    SrsExpired,
    SrsMalformed,
    SrsNotSrsAddress,
    is_srs_address,
)

__all__ = [
    "ArcSealError",
    "DkimSignError",
    "KeyDecryptionError",
    "KeyVault",
    "SigningKey",
    "Srs",
    "SrsBadHash",
    "SrsError",
    "SrsExpired",
    "SrsMalformed",
    "SrsNotSrsAddress",
    "decrypt_private_key",
    "dns_txt_value",
    "encrypt_private_key",
    "generate_signing_key",
    "is_srs_address",
    "load_private_key",
    "normalize_line_endings",
    "seal_arc",
    "sign_dkim",
    "sign_message",
]
