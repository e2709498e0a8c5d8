"""`smsgate`: the operator's command line. Reads the same settings as the web process."""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import click
from sqlalchemy.exc import DBAPIError

from gateway import bootstrap
from gateway.config import ConfigError, Settings
from gateway.domain.consent import Source
from gateway.domain.numbers import InvalidNumber, mask, parse
from gateway.domain.programs import ProgramError, load_file, spec_of
from gateway.domain.review import Resolution
from gateway.services import consents, imports, keys, privacy, review, subscriptions
from gateway.services.ports import Gateway
from gateway.store import checkpoints, ledger, programs
from gateway.store import consents as store_consents
from gateway.store import imports as import_store
from gateway.store.database import Database


class Context:
    """The command's Gateway, built by bootstrap when a command first needs it (`--help` needs none)."""

    def __init__(self):
        self._gateway: Gateway | None = None

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            try:
                self._gateway = bootstrap.from_environment()
            except ConfigError as error:
                raise click.ClickException(f"configuration: {error}") from None
        return self._gateway

    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    @property
    def db(self) -> Database:
        return self.gateway.db


pass_context = click.make_pass_decorator(Context, ensure=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})  # children inherit -h
@click.version_option(package_name="sms-consent-gateway", prog_name="smsgate")
def main() -> None:
    """SMS consent gateway: operate the consent store.

    Reads the same settings (environment variables) as the web and worker processes.

    \b
    Example, a first start:
      smsgate db upgrade
      smsgate programs load config/programs.example.toml
      smsgate keys create crm --scope send
    """


@main.group()
def db() -> None:
    """The database schema.

    \b
    Example:
      smsgate db upgrade
    """


@db.command("upgrade")
@pass_context
def db_upgrade(ctx: Context) -> None:
    """Create the database's tables, or apply the migrations it lacks.

    \b
    Example:
      smsgate db upgrade
    """
    before = ctx.db.revisions()
    ctx.db.upgrade()
    after = ", ".join(ctx.db.revisions())
    if not before:
        click.echo(f"created the database (schema {after})")
    elif ", ".join(before) != after:
        click.echo(f"upgraded the database from schema {', '.join(before)} to {after}")
    else:
        click.echo(f"the database is up to date (schema {after})")


@main.group("programs")
def programs_group() -> None:
    """Messaging programs: what each texts, from which sender, how often.

    \b
    Example:
      smsgate programs list
    """


@programs_group.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_context
def programs_load(ctx: Context, file: Path) -> None:
    """Validate FILE and store its programs (insert or update by slug).

    \b
    Example:
      smsgate programs load config/programs.example.toml
    """
    try:
        specs = load_file(file)
    except ProgramError as error:
        raise click.ClickException(str(error)) from None
    with ctx.db.transaction() as session:
        programs.store(session, specs)
    for spec in specs:
        opt_in = "double" if spec.double_opt_in else "single"
        click.echo(f"{spec.slug}: {spec.name} ({spec.category}, {opt_in} opt-in) "
                   f"from {spec.sender or spec.messaging_service}")
    click.echo(f"loaded {len(specs)} program(s) from {file}; `smsgate programs show SLUG` shows one's disclosure")


@programs_group.command("list")
@pass_context
def programs_list(ctx: Context) -> None:
    """Every stored program: slug, name, category, sender and join keywords.

    \b
    Example:
      smsgate programs list
    """
    with ctx.db.transaction() as session:
        specs = [spec_of(program) for program in programs.all_programs(session)]
    if not specs:
        click.echo("no programs yet: `smsgate programs load config/programs.example.toml` loads the examples")
        return
    for spec in sorted(specs, key=lambda spec: spec.slug):
        keywords = ", ".join(spec.join_keywords) or "-"
        click.echo(f"{spec.slug:<16} {spec.name:<28} {spec.category:<14} from {spec.sender or spec.messaging_service}"
                   f"  keywords: {keywords}")


@programs_group.command("show")
@click.argument("slug")
@pass_context
def programs_show(ctx: Context, slug: str) -> None:
    """One program's disclosure: sender, category, frequency, keywords, the hosted form's words and every
    text it sends.

    \b
    Example:
      smsgate programs show deals
    """
    with ctx.db.transaction() as session:
        program = programs.by_slug(session, slug)
        known = sorted(row.slug for row in programs.all_programs(session)) if program is None else []
        spec = spec_of(program) if program is not None else None
    if spec is None:
        raise click.ClickException(f"no program {slug!r}; known: {', '.join(known) or 'none (load a programs file)'}")
    lines = [
        f"{spec.slug}: {spec.name}",
        f"  category:        {spec.category}",
        f"  sender:          {spec.sender or 'Messaging Service ' + str(spec.messaging_service)}",
        f"  frequency:       {spec.frequency}",
        f"  opt-in:          {'double (the person replies YES)' if spec.double_opt_in else 'single'}",
        f"  join keywords:   {', '.join(spec.join_keywords) or '-'}",
        f"  countries:       {', '.join(spec.allowed_countries) or 'the sender' + chr(39) + 's'}",
        f"  cap:             {_cap(spec)}",
        f"  Twilio opt-outs: {spec.opt_out_handling}",
        f"  terms:           {spec.terms_url or '-'}",
        f"  privacy:         {spec.privacy_url or '-'}",
        f"  hosted form:     {ctx.settings.public_url('/subscribe/' + spec.slug)}",
        "  disclosure (the hosted form's words, recorded with each request):",
        f"    {subscriptions.disclosure(spec).text}",
        "  texts:",
        f"    reply to HELP: {spec.help}",
    ]
    for name in sorted(spec.templates):
        lines.append(f"    {name}: {spec.text(name)}")
    click.echo("\n".join(lines))


def _cap(spec) -> str:
    return f"{spec.max_messages} per {spec.per}" if spec.max_messages else "none (state rules only)"


@main.group("keys")
def keys_group() -> None:
    """API keys: who may call the /v1 API, and for what.

    \b
    Example:
      smsgate keys list
    """


@keys_group.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(keys.SCOPES),
              help="What the key may do; repeat for several scopes.")
@pass_context
def keys_create(ctx: Context, name: str, scopes: tuple[str, ...]) -> None:
    """Create a key named NAME; it is printed once, alone on the last line (only its SHA-256 is kept).

    \b
    Scopes:
      send       POST /v1/messages and /v1/messages/batch; read a message's status
      subscribe  start double opt-in (POST /v1/subscriptions); record an opt-out
      read       GET /v1/consents/{phone} and a message's status
      admin      everything above, and export or erase a number's data

    \b
    Example:
      smsgate keys create crm --scope send --scope read
    """
    try:
        with ctx.db.transaction() as session:
            row, key = keys.create(session, name, list(scopes))
    except keys.KeyProblem as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"created key {row.name!r} with scopes {', '.join(row.scopes)}; it is shown only now:")
    click.echo(key)


@keys_group.command("list")
@pass_context
def keys_list(ctx: Context) -> None:
    """Every key: name, scopes, created, revoked (never the key: it is not kept).

    When a key was last used is not recorded (it would be a write on every API request).

    \b
    Example:
      smsgate keys list
    """
    with ctx.db.transaction() as session:
        rows = keys.listed(session)
    if not rows:
        click.echo("no keys yet: `smsgate keys create NAME --scope send` makes one")
        return
    for row in rows:
        state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        click.echo(f"{row.name:<24} {','.join(row.scopes):<24} created {row.created_at:%Y-%m-%d %H:%M}  {state}")


@keys_group.command("revoke")
@click.argument("name")
@pass_context
def keys_revoke(ctx: Context, name: str) -> None:
    """Revoke the key named NAME: every process refuses it within 10 seconds.

    \b
    Example:
      smsgate keys revoke crm
    """
    with ctx.db.transaction() as session:
        if not keys.revoke(session, name):
            raise click.ClickException(f"no key named {name!r}")
    click.echo(f"revoked {name!r}")


@main.group("consent")
def consent_group() -> None:
    """Consent records: a number's consents and their history; imports.

    \b
    Example:
      smsgate consent show +14155552671
    """


def _number(ctx: Context, raw: str):
    try:
        return parse(raw, ctx.settings.default_region)
    except InvalidNumber as error:
        raise click.ClickException(f"{raw!r}: {error}") from None


@consent_group.command("show")
@click.argument("number")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def consent_show(ctx: Context, number: str, as_json: bool) -> None:
    """Current consents and the ledger of NUMBER.

    \b
    Example:
      smsgate consent show "(415) 555-2671"
    """
    parsed = _number(ctx, number)
    with ctx.db.transaction() as session:
        row = store_consents.find_number(session, parsed.e164)
        rows = consents.consents(session, row) if row else []
        events = consents.events(session, row) if row else []
        data = {
            "phone": parsed.e164,
            "consents": [{"program": c.program.slug, "status": c.status, "updated_at": c.updated_at.isoformat()}
                         for c in rows],
            "events": [{"seq": e.seq, "type": e.type, "program": e.program.slug if e.program else None,
                        "source": e.source, "occurred_at": e.occurred_at.isoformat(), "evidence": e.evidence}
                       for e in events],
        }
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    # Operators asked for this number, so they see it; logs elsewhere only ever see it masked.
    click.echo(f"{parsed.e164} ({mask(parsed.e164)})")
    if not rows:
        click.echo("  no consent recorded")
    for consent in data["consents"]:
        click.echo(f"  {consent['program']:<20} {consent['status']:<10} since {consent['updated_at']}")
    for event in data["events"]:
        click.echo(f"  #{event['seq']:<4} {event['occurred_at']} {event['type']:<16} {event['program'] or '-':<12} "
                   f"via {event['source']}")


@consent_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--results", "results_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the result of every row (default: FILE.results.csv).")
@click.option("--jobs", type=click.IntRange(1, 64), default=lambda: min(os.cpu_count() or 1, 8), show_default="CPUs",
              help="Processes that check rows (parse numbers) ahead of the one that writes.")
@click.option("--chunk", type=click.IntRange(1, 1_000_000), default=imports.CHUNK, show_default=True,
              help="Rows per transaction: what an interrupted import does again.")
@click.option("--again", is_flag=True, help="Import a file that was already imported to the end once more.")
@pass_context
def consent_import(ctx: Context, file: Path, results_path: Path | None, jobs: int, chunk: int, again: bool) -> None:
    """Import consent from a CSV: phone, program, status (opted_in|opted_out), then evidence columns.

    Rows are applied a chunk at a time, each chunk committed with how far the import got: an import
    that was interrupted continues where it stopped when run again on the same file. Every row's
    result (imported, or refused and why) goes to the results file.

    \b
    Example:
      smsgate consent import crm-export.csv
    """
    try:
        facts = imports.read_facts(file)
    except UnicodeDecodeError as error:
        raise click.ClickException(f"{file.name} is not UTF-8 text ({error.reason}): nothing was imported") from None
    found, already_done = imports.begin(ctx.db, digest=facts.digest, name=file.name, actor="cli-import",
                                        total_lines=facts.lines, again=again)
    results_path = results_path or file.with_name(file.name + ".results.csv")
    if already_done:
        click.echo(f"{file.name} was imported already ({found.id}, {found.finished_at:%Y-%m-%d %H:%M} UTC): "
                   "nothing done; --again imports it once more", err=True)
    else:
        if found.line_done > 1:
            click.echo(f"continuing import {found.id} after line {found.line_done}", err=True)
        outcome = _run_import(ctx, found, file, facts, jobs, chunk)
        for status, count in sorted(outcome.counts.items()):
            click.echo(f"{status}: {count}")
    with results_path.open("w", encoding="utf-8", newline="") as handle:
        imports.write_results(ctx.db, found.id, handle)
    _echo_refusals(ctx, found.id, results_path)


def _run_import(ctx: Context, found, file: Path, facts, jobs: int, chunk: int):
    # click's progress bar: already a dependency, and it draws nothing when stderr is not a terminal
    # (a cron job's log gets the summary lines only).
    with click.progressbar(length=max(facts.lines - 1, 1), label="importing", file=sys.stderr,
                           show_pos=True, show_eta=True) as bar:
        bar.update(found.line_done - 1)
        seen = found.line_done

        def advanced(line_done: int) -> None:
            nonlocal seen
            bar.update(line_done - seen)
            seen = line_done

        try:
            with file.open(encoding="utf-8-sig", newline="") as text:
                return imports.run(ctx.db, found.id, text, region=ctx.settings.default_region,
                                   suppression_key=ctx.settings.suppression_key, rules=ctx.gateway.quiet_hours,
                                   jobs=jobs, chunk=chunk, on_progress=advanced)
        except (ValueError, imports.ImportMoved) as error:
            raise click.ClickException(str(error)) from None


def _echo_refusals(ctx: Context, import_id: str, results_path: Path, shown: int = 20) -> None:
    """The summary on stdout; the first refusals on stderr (all of them are in the results file)."""
    with ctx.db.transaction() as session:
        row = import_store.get(session, import_id)
        first = list(itertools.islice(import_store.refusals(session, import_id, batch=shown), shown))
    for line, why in first:
        click.echo(f"line {line}: refused: {why}", err=True)
    if row.refused > len(first):
        click.echo(f"… and {row.refused - len(first)} more refused", err=True)
    click.echo(f"imported {row.applied}, refused {row.refused} (import {import_id}; every row's result in "
               f"{results_path})")


@main.command("export")
@click.argument("number")
@pass_context
def export(ctx: Context, number: str) -> None:
    """Everything held about NUMBER, as JSON.

    \b
    Example:
      smsgate export +14155552671 > number.json
    """
    parsed = _number(ctx, number)
    with ctx.db.transaction() as session:
        row = store_consents.find_number(session, parsed.e164)
        if row is None:
            raise click.ClickException("nothing is held about that number")
        click.echo(json.dumps(privacy.export(session, row), indent=2, ensure_ascii=False))


@main.command("erase")
@click.argument("number")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def erase(ctx: Context, number: str, yes: bool) -> None:
    """Erase personal data about NUMBER, keeping a suppression hash if it opted out.

    \b
    Example:
      smsgate erase +14155552671
    """
    parsed = _number(ctx, number)
    if not yes:
        click.confirm(f"Erase everything about {mask(parsed.e164)}?", abort=True)
    with ctx.db.transaction() as session:
        row = store_consents.find_number(session, parsed.e164)
        if row is None:
            raise click.ClickException("nothing is held about that number")
        result = privacy.erase(session, row, ctx.settings.suppression_key,
                               consents.Evidence(Source.SYSTEM, actor="cli", details={"request": "erasure"}))
    click.echo(f"erased {mask(parsed.e164)}: {result.consents_erased} consents"
               + ("; kept a suppression hash (it had opted out)" if result.suppressed else ""))


@main.group("review")
def review_group() -> None:
    """Replies that may be revocations ("no thanks", "not interested"), kept for review by programs with
    ambiguous_replies = "review": list them, and resolve each as an opt-out or as not a revocation.

    \b
    Example:
      smsgate review list
      smsgate review resolve 1234 --as opt-out --by alice
    """


@review_group.command("list")
@click.option("--program", help="Only this program's replies (its slug).")
@click.option("--limit", type=int, default=50, show_default=True, help="How many replies to show.")
@click.option("--before", type=int, help="Only replies recorded before this event id (the next page).")
@pass_context
def review_list(ctx: Context, program: str | None, limit: int, before: int | None) -> None:
    """Replies awaiting review, newest first: event id, when, the number masked, program, language, the
    program's consent now, and the text. A reply leaves the list when staff resolve it, or when the
    person's later STOP, START or YES (or an erasure) settles it.

    \b
    Example:
      smsgate review list --program alerts --limit 20
    """
    try:
        with ctx.db.transaction() as session:
            page = review.pending(session, program=program, limit=limit, before=before)
    except review.ReviewError as error:
        raise click.ClickException(error.message) from None
    if not page.items:
        click.echo("no replies await review")
        return
    for item in page.items:
        text = json.dumps(item.text, ensure_ascii=False)  # one line, whatever the person typed
        click.echo(f"{item.event_id:<8} {item.received_at:%Y-%m-%d %H:%M} UTC  {item.number:<14} {item.program:<12} "
                   f"{item.language or '-':<7} {item.consent or 'no consent':<11} {text}")
    if page.older is not None:
        click.echo(f"older: smsgate review list --before {page.older}"
                   + (f" --program {program}" if program else "") + f" --limit {limit}")


@review_group.command("resolve")
@click.argument("event_id", type=int)
@click.option("--as", "decision", required=True, type=click.Choice([each.value for each in Resolution]),
              help="opt-out: the reply revoked consent (the program ends, as on STOP); not-revocation: it did "
                   "not (the consent stays).")
@click.option("--by", "by", required=True, help="Who decided (recorded in the ledger as cli:NAME).")
@click.option("--note", help="Why, in a few words (kept with the decision).")
@pass_context
def review_resolve(ctx: Context, event_id: int, decision: str, by: str, note: str | None) -> None:
    """Resolve the reply of review event EVENT_ID (from `smsgate review list`). An opt-out ends the
    program's consent and blocks its queued and deferred texts to the number, as every opt-out does;
    not-revocation records the decision and changes nothing else. Either is a ledger event naming the
    review event and who decided. No text is sent to the person. A reply already resolved, or settled
    by the person's later STOP, START or YES, is refused.

    \b
    Example:
      smsgate review resolve 1234 --as not-revocation --by alice --note "answer to 'any questions?'"
    """
    try:
        done = review.resolve(ctx.gateway, event_id, decision, by=by, via="cli", note=note)
    except review.ReviewError as error:
        raise click.ClickException(error.message) from None
    if done.status_after is not None:
        click.echo(f"review event {event_id} resolved as an opt-out: {done.program} of {done.number} is "
                   f"{done.status_after} (seq {done.seq})")
    else:
        click.echo(f"review event {event_id} resolved as not a revocation: {done.program} of {done.number} "
                   f"unchanged (seq {done.seq})")


@main.group("ledger")
def ledger_group() -> None:
    """The consent ledger: every consent event, hash-chained per number.

    \b
    Example:
      smsgate ledger verify
    """


@ledger_group.command("verify")
@click.option("--number", "number", metavar="NUMBER", help="Check only this number's chain.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes that check ranges of numbers side by side, on one snapshot of the store.")
@click.option("--since-checkpoint", is_flag=True,
              help="Check only the chains that moved since the newest checkpoint; every other chain must "
                   "still end at the head it signed.")
@pass_context
def ledger_verify(ctx: Context, number: str | None, jobs: int, since_checkpoint: bool) -> None:
    """Check every chain, the consents and the newest checkpoint; exit 1 naming each disagreement
    (numbers masked).

    With --since-checkpoint, a chain whose head is still the one the newest checkpoint signed is not
    read again: its older events and its consent rows are left to the full check (docs/ledger.md).

    \b
    Examples:
      smsgate ledger verify
      smsgate ledger verify --jobs 4
      smsgate ledger verify --since-checkpoint
      smsgate ledger verify --number +14155552671
    """
    if number is not None:
        if since_checkpoint or jobs != 1:
            raise click.UsageError("--number checks one chain: it takes neither --jobs nor --since-checkpoint")
        _verify_one(ctx, _number(ctx, number).e164)
        return
    log, _ = checkpoints.from_settings(ctx.settings)
    # The checkpoint is chosen before the store is read: every head it signed is then older than
    # the snapshot verified, so a checkpoint written meanwhile cannot look ahead of the chains.
    checkpoint, log_problems = log.newest()
    if since_checkpoint and checkpoint is None:
        raise click.ClickException("no checkpoint to check since: run the full check (`smsgate ledger verify`) "
                                   "and write one (`smsgate ledger checkpoint`)")
    found = 0
    for problem in log_problems:
        click.echo(f"BROKEN {problem}", err=True)
        found += 1
    tally = ledger.Tally()
    with _progress("checking chains") as progress, _unfinished("the check"):
        for problem in ledger.check(ctx.db, checkpoint=checkpoint, jobs=jobs, since_checkpoint=since_checkpoint,
                                    tally=tally, progress=progress):
            click.echo(f"BROKEN {problem}", err=True)
            found += 1
    walked = f"{tally.chains} chains, {tally.events} events"
    if since_checkpoint:
        walked = (f"{tally.unchanged} chains end at the head the checkpoint of {checkpoint.created_at} signed; "
                  f"{walked} moved since it and were checked whole")
    if found:
        click.echo(f"{found} problem(s) in {walked}", err=True)
        sys.exit(1)
    if since_checkpoint:
        click.echo(f"ledger intact since the checkpoint: {walked}; their consents agree with them. Older events "
                   "of the unchanged chains and their consents were not read: the full check reads them")
    elif checkpoint is None:
        click.echo(f"ledger intact: {walked}; the consents agree with them; no checkpoint yet "
                   "(`smsgate ledger checkpoint` writes one)")
    else:
        click.echo(f"ledger intact: {walked}; the consents agree with them; every chain holds what the "
                   f"checkpoint of {checkpoint.created_at} signed ({checkpoint.size} chains)")


@contextmanager
def _unfinished(what: str) -> Iterator[None]:
    """A job process that died, or a store that stopped answering, ends the command with exit 1 and
    says the work did not finish (never a traceback, never "intact")."""
    try:
        yield
    except BrokenProcessPool:
        raise click.ClickException(f"{what} did not finish: a job process died (killed, or out of memory); "
                                   "run it again") from None
    except DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else type(error).__name__
        raise click.ClickException(f"{what} did not finish: the store stopped answering ({reason}); "
                                   "run it again") from None


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on standard error when it is a terminal (nothing in a pipe or a log): the
    callback takes (done, total)."""
    if not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=1, label=label, file=sys.stderr, show_eta=True) as bar:
        def advance(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        yield advance


def _verify_one(ctx: Context, e164: str) -> None:
    log, _ = checkpoints.from_settings(ctx.settings)
    checkpoint, log_problems = log.newest()
    for problem in log_problems:  # a bad checkpoint log is every number's problem
        click.echo(f"BROKEN {problem}", err=True)
    with ctx.db.snapshot() as session:
        found = store_consents.find_number(session, e164)
        if found is None:
            raise click.ClickException(f"no ledger for {mask(e164)}: nothing is held about that number")
        tally = ledger.Tally()
        problems = list(ledger.verify(session, checkpoint=checkpoint, tally=tally, number_id=found.id))
    for problem in problems:
        click.echo(f"BROKEN {problem}", err=True)
    if problems or log_problems:
        click.echo(f"{len(problems) + len(log_problems)} problem(s) in {mask(e164)}'s chain ({tally.events} events)",
                   err=True)
        sys.exit(1)
    signed = f"; it holds what the checkpoint of {checkpoint.created_at} signed" if checkpoint else ""
    click.echo(f"{mask(e164)}: chain intact, {tally.events} events; its consents agree with them{signed}")


@ledger_group.command("checkpoint")
@pass_context
def ledger_checkpoint(ctx: Context) -> None:
    """Sign every chain's head and add the checkpoint to the checkpoint log.

    \b
    Example:
      smsgate ledger checkpoint
    """
    log, signer = checkpoints.from_settings(ctx.settings)
    try:
        with ctx.db.snapshot() as session:
            written = checkpoints.take(session, log, signer)
    except checkpoints.Refused as refused:
        for problem in refused.problems:
            click.echo(f"BROKEN {problem}", err=True)
        raise click.ClickException("no checkpoint written: the ledger no longer holds what the newest "
                                   "checkpoint signed (docs/ledger.md)") from None
    click.echo(f"checkpoint of {written.created_at}: {written.size} chains, root {written.root}, in {written.path}")


@ledger_group.command("public-key")
@pass_context
def ledger_public_key(ctx: Context) -> None:
    """The public key that verifies our checkpoints (hex), for whoever checks them.

    \b
    Example:
      smsgate ledger public-key > checkpoint-key.hex
    """
    click.echo(checkpoints.Signer(ctx.settings.ledger_signing_key).public_key)


@ledger_group.command("rebuild")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes that replay ranges of numbers side by side (the consents are written in one "
                   "transaction).")
@pass_context
def ledger_rebuild(ctx: Context, jobs: int) -> None:
    """Recompute every consent from the ledger alone.

    \b
    Examples:
      smsgate ledger rebuild
      smsgate ledger rebuild --jobs 4
    """
    with _unfinished("the rebuild (nothing was written)"), ctx.db.transaction() as session, \
            _progress("replaying chains") as progress:
        count = store_consents.rebuild(session, jobs=jobs, progress=progress)
    click.echo(f"rebuilt {count} consents from the ledger")


@main.group("inbound")
def inbound_group() -> None:
    """Inbound texts: the journal of texts the database could not take, and reconciliation.

    \b
    Example:
      smsgate inbound replay
    """


@inbound_group.command("replay")
@click.option("--held", is_flag=True, help="Apply the held texts again instead (once their cause is fixed).")
@pass_context
def inbound_replay(ctx: Context, held: bool) -> None:
    """Apply the texts the inbound journal holds (the web processes also do it on a timer).

    \b
    Example:
      smsgate inbound replay --held
    """
    from gateway.services import inbound_journal

    # The same Gateway as the web process's, so a join keyword's confirmation is enqueued as the webhook would.
    replayed = (inbound_journal.retry_held if held else inbound_journal.replay)(ctx.gateway)
    if replayed.busy:
        raise click.ClickException("another replayer on this host is at work; try again in a moment")
    click.echo(f"applied {replayed.applied}, already stored {replayed.duplicates}, newly held {replayed.newly_held}, "
               f"waiting {replayed.waiting}, held {replayed.held}")
    if replayed.waiting:
        sys.exit(1)  # the store failed again: nothing after the first waiting text was tried


@inbound_group.command("reconcile")
@pass_context
def inbound_reconcile(ctx: Context) -> None:
    """Read Twilio's message log once for texts whose webhook never came, apply them, print the counts
    (beat does it every INBOUND_RECONCILE_SECONDS).

    \b
    Example:
      smsgate inbound reconcile
    """
    from gateway.services import inbound_reconcile

    # The same Gateway as the worker's, so a join keyword's confirmation is enqueued as the webhook would.
    reconciled = inbound_reconcile.reconcile(ctx.gateway)
    click.echo(f"listed {reconciled.listed}, applied {reconciled.applied}, already stored {reconciled.stored}, "
               f"overtaken {reconciled.overtaken}, left for the next run {reconciled.young}, "
               f"refused {reconciled.refused}, failed senders {len(reconciled.failed)}")
    if reconciled.failed:
        sys.exit(1)  # those senders' logs were not read through: their watermarks stayed


@main.group("deactivations")
def deactivations_group() -> None:
    """The carriers' Deactivations list: numbers their subscribers gave up (beat reads it hourly).

    \b
    Example:
      smsgate deactivations run --date 2026-03-01
    """


@deactivations_group.command("run")
@click.option("--date", "day", metavar="YYYY-MM-DD",
              help="Read this day's list (a day read before is left as it is). Default: every recent day not read yet.")
@pass_context
def deactivations_run(ctx: Context, day: str | None) -> None:
    """Read the Deactivations list and end the consents of the numbers on it (reason "carrier
    deactivation"), after a line-type look-up tells a port from a deactivation when LOOKUP_LINE_TYPE is on.

    \b
    Example:
      smsgate deactivations run --date 2026-03-01
    """
    from datetime import date as Date

    from gateway.services import deactivations

    if day is not None:
        try:
            wanted = Date.fromisoformat(day)
        except ValueError:
            raise click.BadParameter(f"expected a date as YYYY-MM-DD, got {day!r}", param_hint="--date") from None
        try:
            runs = [deactivations.run_day(ctx.gateway, wanted)]
        except deactivations.NotReadable as error:
            raise click.BadParameter(str(error), param_hint="--date") from None
    else:
        runs = deactivations.run_due(ctx.gateway)
        if not runs:
            click.echo("every recent day was read already")
    for run in runs:
        if run.already:
            click.echo(f"{run.day}: read already, nothing changed")
        elif run.error:
            click.echo(f"{run.day}: the list could not be read ({run.error}); the next run tries again")
        else:
            click.echo(f"{run.day}: listed {run.listed}, ours {run.held}, ended {run.ended}, ported {run.ported}"
                       + (f", {run.left} left for the next run (look-up unavailable)" if run.left else ""))
    if not all(run.finished for run in runs):
        sys.exit(1)


@main.group("proof")
def proof_group() -> None:
    """Proof bundles: a number's consent history that anyone can check offline (docs/proofs.md).

    \b
    Example:
      smsgate proof export +14155552671 -o proof.json && smsgate proof verify proof.json
    """


@proof_group.command("export")
@click.argument("number")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="write the bundle here (default: standard output)")
@pass_context
def proof_export(ctx: Context, number: str, output: Path | None) -> None:
    """Write NUMBER's proof bundle: its ledger events as hashed, the chain's head, and the newest
    signed checkpoint covering it with the Merkle proof of its place there.

    \b
    Example:
      smsgate proof export "(415) 555-0147" -o proof-4155550147.json
    """
    from gateway.services import proofs

    parsed = _number(ctx, number)
    with ctx.db.snapshot() as session:
        row = store_consents.find_number(session, parsed.e164)
        if row is None:
            raise click.ClickException("nothing is held about that number")
        document = proofs.bundle(session, row, ctx.settings)
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")
        click.echo(f"wrote {output}: {len(document['events'])} events", err=True)
    if document["checkpoint"] is None:
        click.echo("warning: no signed checkpoint covers this number yet, so the bundle proves the chain only "
                   "against itself; run `smsgate ledger checkpoint` and export again", err=True)


@proof_group.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public-key", help="the ledger public key to trust (default: this deployment's)")
@pass_context
def proof_verify(ctx: Context, file: Path, public_key: str | None) -> None:
    """Check a proof bundle as tools/verify_proof.py does (the same code): hashes, links, head, the
    checkpoint's signature and the chain's place in it. Exits 1 naming what does not hold.

    \b
    Example:
      smsgate proof verify proof-4155550147.json
    """
    import importlib.util

    from gateway.config import ROOT

    spec = importlib.util.spec_from_file_location("verify_proof", ROOT / "tools" / "verify_proof.py")
    verifier = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verifier)
    key = public_key or checkpoints.from_settings(ctx.settings)[1].public_key
    sys.exit(verifier.main([str(file), "--public-key", key]))


@main.command("status")
@pass_context
def status(ctx: Context) -> None:
    """How the gateway is doing: store, broker, the worker's heartbeat, the outbox's backlog, the
    last text in and out, the last ledger checkpoint. Exits 1 naming what is wrong (a stale worker,
    a backlog older than OUTBOX_BACKLOG_MAX_SECONDS, an unreachable store or broker).

    \b
    Example:
      smsgate status || page-the-on-call
    """
    from gateway.services import operations

    health = operations.read(ctx.gateway, broker=True)
    settings = ctx.settings

    def ago(moment) -> str:
        seconds = health.age(moment)
        return "never" if seconds is None else f"{_duration(seconds)} ago ({moment:%Y-%m-%d %H:%M:%S} UTC)"

    lines = [
        ("store", health.store_error or f"ok ({ctx.db.dialect})"),
        ("broker", health.broker_error or "ok"),
    ]
    if health.store_error is None:
        worker = f"{health.heartbeat[0]}, {ago(health.heartbeat[1])}" if health.heartbeat else "never"
        waiting = ", ".join(f"{count} {status}" for status, count in health.backlog.by_status.items())
        oldest = health.oldest_queued_age
        lines += [
            ("worker heartbeat", worker),
            ("backlog", f"{waiting}; {health.backlog.deferred_due} deferred now due"),
            ("oldest queued", "none waiting" if oldest is None else _duration(oldest)),
            ("pending confirmations", str(health.pending_requests)),
            ("last inbound text", ago(health.last_inbound)),
            ("last message sent", ago(health.last_sent)),
        ]
        if health.autovacuum is not None:  # PostgreSQL's: store/operations.autovacuum says why it matters
            lines.append(("store upkeep", "autovacuum on" if health.autovacuum else
                          "autovacuum OFF: tables keep the statistics and plans of when they were small; "
                          "turn it on (postgresql.conf) or run ANALYZE as the tables grow"))
    lines += [("inbound journal", f"{health.journal_length} waiting"),
              ("last ledger checkpoint", ago(health.last_checkpoint))]
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        click.echo(f"{label:<{width}}  {value}")
    problems = health.problems(settings)
    for problem in problems:
        click.echo(f"PROBLEM: {problem}", err=True)
    if problems:
        sys.exit(1)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@main.group("users")
def users_group() -> None:
    """Accounts of the compliance console (/console): viewer, compliance or admin.

    \b
    Example:
      smsgate users create alice --role compliance
    """


@users_group.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["viewer", "compliance", "admin"]),
              help="viewer sees; compliance also downloads certificates, bundles and exports; admin also reads "
                   "the access log and erases.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of "
                                                     "generating one.")
@pass_context
def users_create(ctx: Context, name: str, role: str, password_stdin: bool) -> None:
    """Create a console account. Without --password-stdin a password is generated and printed once,
    alone on the last line.

    \b
    Example:
      smsgate users create alice --role compliance
      printf '%s' "$PASSWORD" | smsgate users create bob --role viewer --password-stdin
    """
    from gateway.services import console

    password = sys.stdin.read().rstrip("\r\n") if password_stdin else console.generate_password()
    try:
        with ctx.db.transaction() as session:
            user = console.create_user(session, name, role, password)
    except console.ConsoleError as error:
        raise click.ClickException(error.message) from None
    click.echo(f"created console user {user.name!r} with role {user.role}")
    if not password_stdin:
        click.echo("password (shown only now):")
        click.echo(password)


def _users_change(ctx: Context, change):
    """Run one account change in a transaction; a refusal (an unknown name, a short password) exits 1."""
    from gateway.services import console

    try:
        with ctx.db.transaction() as session:
            return change(session, console)
    except console.ConsoleError as error:
        raise click.ClickException(error.message) from None


@users_group.command("list")
@pass_context
def users_list(ctx: Context) -> None:
    """List the console's accounts: name, role, created, last sign-in, and whether locked or disabled.

    \b
    Example:
      smsgate users list
    """
    from gateway.store.models import utcnow

    now = utcnow()
    users = _users_change(ctx, lambda session, console: [
        (u.name, u.role, u.created_at, u.last_login_at, u.locked_until, u.disabled_at)
        for u in console.list_users(session)])
    if not users:
        click.echo("no console users (smsgate users create NAME --role ROLE)")
        return
    click.echo(f"{'name':<24} {'role':<11} {'created':<17} {'last sign-in':<17} state")
    stamp = lambda moment: moment.strftime("%Y-%m-%d %H:%M") if moment else "never"
    for name, role, created, last, locked_until, disabled_at in users:
        if disabled_at:
            state = f"disabled since {stamp(disabled_at)} UTC"
        elif locked_until and locked_until > now:
            state = f"locked until {stamp(locked_until)} UTC"
        else:
            state = "active"
        click.echo(f"{name:<24} {role:<11} {stamp(created):<17} {stamp(last):<17} {state}")


@users_group.command("disable")
@click.argument("name")
@pass_context
def users_disable(ctx: Context, name: str) -> None:
    """Disable an account: it cannot sign in, and its open sessions stop working at once. The account
    and its entries in the access log stay (`smsgate users enable NAME` lets it in again).

    \b
    Example:
      smsgate users disable alice
    """
    ended = _users_change(ctx, lambda session, console: console.disable_user(session, name))
    click.echo(f"disabled console user {name!r}; {ended} open session(s) ended")


@users_group.command("enable")
@click.argument("name")
@pass_context
def users_enable(ctx: Context, name: str) -> None:
    """Let a disabled account sign in again, with its password as it was.

    \b
    Example:
      smsgate users enable alice
    """
    _users_change(ctx, lambda session, console: console.enable_user(session, name))
    click.echo(f"enabled console user {name!r}")


@users_group.command("unlock")
@click.argument("name")
@pass_context
def users_unlock(ctx: Context, name: str) -> None:
    """End an account's lockout after too many failed sign-ins (CONSOLE_MAX_FAILED_LOGINS), now rather
    than after CONSOLE_LOCKOUT_SECONDS, and forget its failed attempts.

    \b
    Example:
      smsgate users unlock alice
    """
    was_locked = _users_change(ctx, lambda session, console: console.unlock_user(session, name))
    click.echo(f"unlocked console user {name!r}" if was_locked else f"console user {name!r} was not locked")


@users_group.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input instead of "
                                                     "generating one.")
@pass_context
def users_password(ctx: Context, name: str, password_stdin: bool) -> None:
    """Reset an account's password: a new one is generated and printed once, alone on the last line
    (or read with --password-stdin). It also ends a lockout and signs the account out everywhere.

    \b
    Example:
      smsgate users password alice
      printf '%s' "$PASSWORD" | smsgate users password alice --password-stdin
    """
    from gateway.services import console

    password = sys.stdin.read().rstrip("\r\n") if password_stdin else console.generate_password()
    ended = _users_change(ctx, lambda session, console: console.set_password(session, name, password))
    click.echo(f"new password set for console user {name!r}; {ended} open session(s) ended")
    if not password_stdin:
        click.echo("password (shown only now):")
        click.echo(password)


if __name__ == "__main__":  # pragma: no cover
    main()
