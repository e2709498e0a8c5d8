"""Consent certificates: one number's consent history in plain words, with its evidence and the proof
anyone can check (the proof bundle and tools/verify_proof.py). A printable page and a PDF (fpdf2),
both built from one `Certificate`, so they cannot say different things.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from fpdf import FPDF

from gateway.domain import certificates
from gateway.domain.certificates import STATUS_WORDS, Statement
from gateway.domain.consent import Status
from gateway.domain.numbers import mask

# fpdf2 subsets the font through fontTools, which logs every table it touches at INFO: noise in our logs.
logging.getLogger("fontTools").setLevel(logging.WARNING)

# Time zones the console offers (a select); UTC first, the default.
ZONES = ("UTC", "America/New_York", "America/Chicago", "America/Denver", "America/Phoenix", "America/Los_Angeles",
         "America/Anchorage", "Pacific/Honolulu", "America/Toronto", "America/Vancouver", "America/Mexico_City",
         "America/Sao_Paulo", "Europe/London", "Europe/Dublin", "Europe/Paris", "Europe/Berlin", "Europe/Madrid",
         "Africa/Johannesburg", "Asia/Kolkata", "Asia/Singapore", "Asia/Tokyo", "Australia/Sydney",
         "Pacific/Auckland")


def local_time(moment: datetime | None, zone: str) -> str:
    """A stored UTC moment on the clock of `zone`, to the second, naming the zone and its offset."""
    if moment is None:
        return "-"
    if zone == "UTC":
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    local = moment.astimezone(ZoneInfo(zone))
    offset = local.strftime("%z")
    return local.strftime("%Y-%m-%d %H:%M:%S %Z") + f" (UTC{offset[:3]}:{offset[3:]})"


@dataclass(frozen=True)
class ProgramLine:
    name: str
    slug: str
    status: str
    asked_at: str
    agreed_at: str
    stopped_at: str


@dataclass(frozen=True)
class Certificate:
    number: str
    number_id: int
    erased_at: str | None
    program: str | None  # the program's name, for a certificate of one program
    zone: str
    made_at: str
    made_by: str
    programs: list[ProgramLine]
    statements: list[Statement]
    head_seq: int
    head_hash: str
    checkpoint: dict | None  # created_at, root, public_key, head seq
    public_key: str
    unproven: int  # events after the checkpoint: proven by the chain only, until the next checkpoint


def build(record, *, zone: str, program_slug: str | None, made_by: str, now: datetime) -> Certificate:
    """The certificate of a console Record (with its proof bundle) for all its programs or one."""
    programs = record.programs
    chosen = next((p for p in programs.values() if p.slug == program_slug), None) if program_slug else None
    events = record.events
    if chosen is not None:
        events = [event for event in events if event.program_id in (chosen.id, None)]
    names = lambda program_id: programs[program_id].name if program_id in programs else "(no program)"
    when = lambda moment: local_time(moment, zone)
    lines = []
    for program_id, summary in sorted(certificates.summaries(events).items()):
        program = programs.get(program_id)
        lines.append(ProgramLine(program.name if program else f"#{program_id}", program.slug if program else "",
                                 STATUS_WORDS[Status(summary.status) if summary.status else None],
                                 when(summary.asked_at) if summary.asked_at else "never",
                                 when(summary.agreed_at) if summary.agreed_at else "never",
                                 when(summary.stopped_at) if summary.stopped_at else "never"))
    proof = record.proof
    checkpoint = proof["checkpoint"]
    signed_seq = checkpoint["head"]["seq"] if checkpoint else 0
    number = record.number
    return Certificate(
        number=number.e164 or f"erased number {number.id}", number_id=number.id,
        erased_at=when(number.erased_at) if number.erased_at else None,
        program=chosen.name if chosen else None, zone=zone, made_at=when(now), made_by=made_by,
        programs=lines, statements=certificates.statements(events, names, when),
        head_seq=proof["head"]["seq"], head_hash=proof["head"]["hash"],
        checkpoint=None if checkpoint is None else {
            "created_at": checkpoint["created_at"], "root": checkpoint["root"], "seq": signed_seq,
            "public_key": checkpoint["public_key"]},
        public_key=proof["public_key"], unproven=proof["head"]["seq"] - signed_seq)


def file_stem(certificate: Certificate) -> str:
    """A download's name: the number's row id, never the number (file names end up in logs)."""
    return f"consent-certificate-{certificate.number_id}"


# Debian's DejaVu covers the texts people send (accents, curly quotes, most scripts); without it the
# PDF falls back to a core font and marks each character it cannot draw.
_FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def pdf(certificate: Certificate) -> bytes:
    """The certificate as a PDF: the same sentences, evidence and proof as the printable page."""
    document = FPDF(format="A4")
    # The title is file metadata that viewers and indexers show: the number masked there.
    shown = mask(certificate.number) if certificate.number.startswith("+") else certificate.number
    document.set_title(f"Consent certificate: {shown}")
    document.set_creator("smsgate")
    unicode_font = (_FONT_DIR / "DejaVuSans.ttf").exists() and (_FONT_DIR / "DejaVuSans-Bold.ttf").exists()
    if unicode_font:
        document.add_font("DejaVu", "", str(_FONT_DIR / "DejaVuSans.ttf"))
        document.add_font("DejaVu", "B", str(_FONT_DIR / "DejaVuSans-Bold.ttf"))
        family = "DejaVu"
    else:
        family = "Helvetica"

    def text(value: str) -> str:
        return value if unicode_font else value.encode("latin-1", "replace").decode("latin-1")

    def para(value: str, size: float = 10, style: str = "", gap: float = 1.5) -> None:
        document.set_font(family, style, size)
        document.multi_cell(0, size * 0.5, text(value), new_x="LMARGIN", new_y="NEXT")
        document.ln(gap)

    document.add_page()
    title = "Consent certificate" + (f": {certificate.program}" if certificate.program else "")
    para(title, 16, "B", 3)
    para(f"Number: {certificate.number}", 11, "B")
    if certificate.erased_at:
        para(f"This number's personal data was erased on {certificate.erased_at}. The events below keep their "
             "times and hashes; their evidence was redacted.")
    para(f"Made on {certificate.made_at} by {certificate.made_by}. Times are in {certificate.zone}.", 9, "", 4)
    para("Summary", 13, "B")
    for line in certificate.programs:
        para(f"{line.name}: {line.status}. Asked: {line.asked_at}. Agreed: {line.agreed_at}. "
             f"Stopped: {line.stopped_at}.")
    if not certificate.programs:
        para("No consent to any program was ever recorded for this number.")
    document.ln(2)
    para("What happened", 13, "B")
    for statement in certificate.statements:
        para(f"{statement.when} (event {statement.seq}): {statement.text}", 10, "B", 0.5)
        for label, quoted in statement.quotes:
            para(f"{label}: \u201c{quoted}\u201d", 9.5, "", 0.5)
        for label, value in statement.origin:
            para(f"{label}: {value}", 8.5, "", 0.5)
        document.ln(1.5)
    para("Proof", 13, "B")
    for line in proof_lines(certificate):
        para(line, 9)
    return bytes(document.output())


def proof_lines(certificate: Certificate) -> list[str]:
    """What the proof section says, the same on the page and in the PDF."""
    lines = [f"This number's hash chain ends at event {certificate.head_seq} with hash {certificate.head_hash}."]
    if certificate.checkpoint is None:
        lines.append("No signed ledger checkpoint covers this chain yet: the chain proves itself only. "
                     "The operator takes checkpoints regularly (smsgate ledger checkpoint).")
    else:
        lines.append(f"The signed ledger checkpoint of {certificate.checkpoint['created_at']} covers it up to event "
                     f"{certificate.checkpoint['seq']}; its Merkle root is {certificate.checkpoint['root']}.")
        if certificate.unproven:
            lines.append(f"{certificate.unproven} later event(s) are proven by the chain only, until the next "
                         "checkpoint.")
    lines.append(f"The operator's ledger public key (Ed25519): {certificate.public_key}.")
    lines.append("To check this record without trusting us: get the proof bundle of this number (JSON) and run "
                 "python3 tools/verify_proof.py BUNDLE.json --public-key KEY. It recomputes every hash, the chain's "
                 "links and head, the checkpoint's signature and the chain's place in the signed root.")
    return lines
