"""Ghostbusters records (RFC 6493): the eContent is a vCard 4.0 (RFC 6350), CRLF line ends,
with the properties RFC 6493 §5 allows: VERSION, FN and ORG (required FN), ADR, TEL, EMAIL."""

from __future__ import annotations

__all__ = ["encode_vcard"]


def _escape(text: str) -> str:
    # RFC 6350 §3.4: backslash, comma and semicolon are escaped in text values.
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(";", "\\;")


def encode_vcard(full_name: str, org: str, email: str, phone: str) -> bytes:
    lines = [
        "BEGIN:VCARD",
        "VERSION:4.0",
        f"FN:{_escape(full_name)}",
        f"ORG:{_escape(org)}",
        f"TEL;TYPE=VOICE,TEXT,WORK;VALUE=uri:tel:{phone}",
        f"EMAIL:{email}",
        "END:VCARD",
    ]
    text = "\r\n".join(lines) + "\r\n"
    return text.encode("ascii")
