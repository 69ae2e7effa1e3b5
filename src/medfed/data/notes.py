"""Scrub protected health information (PHI) from clinical notes; notes become features only through it.

The scrubber finds the HIPAA Safe Harbor identifiers that occur in free text (45 CFR
§164.514(b)(2)): names, dates and ages over 89, phone and fax numbers, e-mail addresses, URLs and
IP addresses, social security numbers, medical record and other identifying numbers (accounts,
health plans, licences, devices, vehicles), street addresses and places smaller than a state. It
uses regular expressions, name dictionaries (the US Census 1990 first- and last-name lists shipped
by the ``names`` package) and context rules in the manner of Neamatullah et al. 2008 ("Automated
de-identification of free-text medical records", the PhysioNet deid tool): a title ("Dr.", "Mrs."),
a cue ("patient", "called", "MRN") or a known first name next to a capitalised word makes a name;
a name found once is removed everywhere in the note.

Each found span is replaced with a typed surrogate such as ``[NAME]``. :func:`scrub` returns the
scrubbed text and the spans (offsets in the original text, never the values).
:func:`note_features` is the only way notes become model features: it scrubs first, then counts
words. Measured precision and recall: ``docs/deidentification.md``.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

import numpy as np
import numpy.typing as npt

from medfed.core.errors import ConfigError, DataError


class PhiType(enum.Enum):
    """Kinds of identifier the scrubber removes; the value is the surrogate's label.

    The order is the tie-break when two rules claim the same text: the more specific kind first.
    """

    EMAIL = "EMAIL"
    URL = "URL"
    IP = "IP"
    SSN = "SSN"
    FAX = "FAX"
    PHONE = "PHONE"
    MRN = "MRN"
    DATE = "DATE"
    AGE = "AGE"
    ADDRESS = "ADDRESS"
    LOCATION = "LOCATION"
    NAME = "NAME"
    ID = "ID"


@dataclass(frozen=True, slots=True, kw_only=True)
class PhiSpan:
    """One identifier found: ``text[start:end]`` of the original note is of kind ``kind``."""

    start: int
    end: int
    kind: PhiType


@dataclass(frozen=True, slots=True, kw_only=True)
class ScrubResult:
    """The scrubbed text and where identifiers were (offsets into the original, no values)."""

    text: str
    spans: tuple[PhiSpan, ...]

    def counts(self) -> dict[PhiType, int]:
        """How many identifiers of each kind were replaced."""
        return dict(Counter(span.kind for span in self.spans))


_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_ORDINAL = (
    r"(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|"
    r"thirteenth|fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|"
    r"twenty[- ](?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth)|thirtieth|thirty[- ]first)"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_STREET = (
    r"(?:Street|St|Road|Rd|Avenue|Ave|Boulevard|Blvd|Drive|Dr|Lane|Ln|Way|Court|Ct|Place|Pl|Terrace|Ter|"
    r"Circle|Cir|Highway|Hwy|Parkway|Pkwy|Square|Sq|Trail|Trl)\b\.?"
)
# Capitalised words, Latin-1 letters included ("Benjamín", "María").
_UP, _LOW = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
_CAP = rf"(?:[{_UP}]')?[{_UP}][{_LOW}]+(?:[-'][{_UP}][{_LOW}]+)?"  # O'Brien, Ferndale-Ostrowski
_I = re.IGNORECASE

# (kind, pattern, group to mark): order does not matter, overlaps are resolved by _resolve().
_PATTERNS: tuple[tuple[PhiType, re.Pattern[str], int], ...] = (
    (PhiType.EMAIL, re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), 0),
    (PhiType.URL, re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:)]", _I), 0),
    (PhiType.IP, re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"), 0),
    (PhiType.SSN, re.compile(r"\b\d{3}([- ])\d{2}\1\d{4}\b"), 0),
    (PhiType.SSN, re.compile(r"(?:\bSSN|social security(?: number)?)\W{0,3}(?:\w+\W+){0,3}?(\d{9})\b", _I), 1),
    (PhiType.PHONE, re.compile(r"(?<![\w-])(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}\b"), 0),
    (
        PhiType.MRN,
        re.compile(r"(?:MRN|medical record(?: number| no\.?)?|chart(?: number| no\.?)?)\W{0,3}(\d[\w-]{2,})", _I),
        1,
    ),
    (PhiType.MRN, re.compile(r"MRN\s*#?:?\s*([A-Z]*\d{3,}[\w-]*)", _I), 1),
    (
        PhiType.ID,
        re.compile(
            r"(?:account|acct|member ID|ID|policy|license|licence|plate|serial|SN|VIN|certificate|"
            r"study code|code)\s*(?:number|no\.?|#)?\s*(?:is|:)?\s*([A-Z0-9][A-Z0-9-]{3,}\d[A-Z0-9-]*|\d{4,})",
            _I,
        ),
        1,
    ),
    (PhiType.ID, re.compile(r"\b(?=[A-Z0-9-]*\d)(?=[A-Z0-9-]*[A-Z])[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+\b"), 0),
    (PhiType.ID, re.compile(r"\b(?=[A-HJ-NPR-Z0-9]*\d)(?=[A-HJ-NPR-Z0-9]*[A-Z])[A-HJ-NPR-Z0-9]{17}\b"), 0),
    (PhiType.ID, re.compile(r"(?<![\w.,])\d{5,}(?!\w|[.,]\d)"), 0),  # not the decimals of 0.00146
    (PhiType.ID, re.compile(r"\b[\w-]+\.(?:jpe?g|png|gif|tiff?|bmp|dcm|heic)\b", _I), 0),
    (PhiType.DATE, re.compile(r"\b(?:\d{1,2}[/-]\d{1,2}[/-](?:\d{4}|\d{2})|\d{4}-\d{2}-\d{2}|\d{4}/\d{2}/\d{2})\b"), 0),
    (PhiType.DATE, re.compile(rf"\b{_MONTH}\s+{_DAY}(?:,?\s+\d{{4}})?\b"), 0),
    (PhiType.DATE, re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}(?:,?\s+\d{{4}})?\b"), 0),
    (PhiType.DATE, re.compile(rf"\b(?:the\s+)?{_ORDINAL}\s+of\s+{_MONTH}(?:,?\s+\d{{4}})?", _I), 0),
    (PhiType.DATE, re.compile(rf"\b{_MONTH}\s+(?:of\s+)?\d{{4}}\b"), 0),
    (PhiType.AGE, re.compile(r"\b(?:9\d|1[0-4]\d)(?:[- ]?(?:years?|yrs?|y)[- ]?(?:old|o)\b|\s?y/o\b|\s?yo\b)", _I), 0),
    (PhiType.AGE, re.compile(r"\b(?:age[ds]?|aged)\s*:?\s*(9\d|1[0-4]\d)\b", _I), 1),
    (
        PhiType.ADDRESS,
        re.compile(rf"\b\d{{1,6}}\s+(?:{_CAP}\s+){{1,4}}{_STREET}(?:,?\s*(?:Apt|Suite|Unit|#)\s*\w+)?"),
        0,
    ),
    (PhiType.LOCATION, re.compile(rf"\b({_CAP}(?:\s{_CAP}){{0,2}}),\s+[A-Z]{{2}}\b(?=\s+\d{{5}})"), 1),
    (PhiType.LOCATION, re.compile(r"\b[A-Z]{2}\s+(\d{5}(?:-\d{4})?)\b"), 1),
    (PhiType.LOCATION, re.compile(r"\b(?:zip|postal)(?: code)?\W+(?:\w+\W+){0,4}?(\d{5}(?:-\d{4})?)\b", _I), 1),
    (PhiType.LOCATION, re.compile(rf"\b{_CAP}(?:\s{_CAP})?\s(?:County|Parish|Township)\b"), 0),
    (PhiType.LOCATION, re.compile(rf"\b(?:city|town|village) of\s+({_CAP}(?:\s{_CAP})?)"), 1),
    (PhiType.LOCATION, re.compile(rf"\b(?:lives|living|resides|residing|born) in\s+({_CAP}(?:\s{_CAP})?)"), 1),
)
_FAX_CUE = re.compile(r"\bfax(?:ed)?\b", _I)
_TITLE = re.compile(rf"\b(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Doctor|Nurse)\.?\s+((?:{_CAP} ?){{1,3}})")
_CUED = re.compile(
    rf"\b(?:patient|pt|name|named|called|charted as|son|daughter|wife|husband|mother|father|"
    rf"spouse|contact|signed by|seen by)\s*:?\s*['\"]?({_CAP}(?:[ -]{_CAP})?)['\"]?",
)
_BEFORE_CUE = re.compile(rf"\b({_CAP}(?:[ -]{_CAP}){{1,2}})\s*[(,]\s*(?:MRN|DOB|date of birth|age[ds]?\b|born)")
# "May is a 72 year-old ...": the subject of an age statement is the patient, whatever the word.
_AGE_SUBJECT = re.compile(
    rf"\b({_CAP}(?: {_CAP}){{0,2}}) (?:is|was) an? "
    r"(?:\d+[- ](?:years?|months?|weeks?|days?)[- ]old|newborn|neonate|infant)\b"
)
_SUBJECT_WORDS = """Patient Pt He She They This That It Who Client Resident Child Infant Baby Boy Girl Man Woman
Person The Mother Father Sister Brother Son Daughter Husband Wife Spouse Partner Sibling Twin Donor Caregiver"""
_SUBJECTS = frozenset(_SUBJECT_WORDS.split())
_VERB_AFTER = (" is ", " was ", " has ", " had ", " presents", " reports", " denies", " states")
_WORD = re.compile(rf"(?:[{_UP}]')?[{_UP}][{_LOW}]+(?:[-'][{_UP}][{_LOW}]+)*")
# Capitalised words that the census lists hold but that open sentences or name things in notes.
_NOT_NAME_WORDS = """Patient Pt The This That These Those He She His Her They Their Was Were Is Are Has Had No Not
    And Or But If On In At By For From With Without Per Plan History Chief Complaint Assessment Allergies
    Medications Medication Vital Signs Social Family Past Medical Surgical Review Physical Exam Alert
    Oriented General Normal Denies Reports Admitted Discharged Seen Follow Return Will May June April
    August March Monday Tuesday Wednesday Thursday Friday Saturday Sunday Home Health Care Clinic
    Hospital Center Street Road Avenue Emergency Department Unit Room Bed Mercy Grace Hope Faith
    Blood Pressure Heart Rate Body Weight Height Temperature Pain Oral Routine Best Reach Records Billing
    Enrollment Timeline Consult Progress Note Notes Device Alternate Primary Care Insurance Medicare
    Medicaid Married Single Divorced Never Smoker Former Current White Black Asian Hispanic Non English
    Spanish Acute Chronic Diabetes Disorder Disease Syndrome Infection Fracture Cancer Viral Essential
    Hypertension Prediabetes Anemia Obesity Sinusitis Pharyngitis Bronchitis Otitis Media Sprain Lab
    Labs Test Tests Panel Screening Vaccine Influenza Administration Assessment Therapy"""
_NOT_NAMES = frozenset(_NOT_NAME_WORDS.split())


@cache
def _name_lists() -> tuple[frozenset[str], frozenset[str]]:
    """Census 1990 first names (male and female) and last names, title-cased, from the ``names`` package."""
    try:
        root = resources.files("names")
        first = {
            line.split()[0].title()
            for name in ("dist.male.first", "dist.female.first")
            for line in root.joinpath(name).read_text(encoding="ascii").splitlines()
            if line.strip()
        }
        last = {
            line.split()[0].title()
            for line in root.joinpath("dist.all.last").read_text(encoding="ascii").splitlines()
            if line.strip()
        }
    except (ModuleNotFoundError, OSError) as exc:
        raise DataError(f"the name lists of the 'names' package cannot be read ({exc})") from exc
    return frozenset(first - _NOT_NAMES), frozenset(last - _NOT_NAMES)


def _fold(word: str) -> str:
    """A word without accents, for the ASCII census lists ("Benjamín" -> "Benjamin")."""
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def _pattern_spans(text: str) -> list[PhiSpan]:
    spans = []
    for kind, pattern, group in _PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span(group)
            if kind is PhiType.PHONE and _FAX_CUE.search(text, max(0, start - 25), start):
                kind_here = PhiType.FAX
            else:
                kind_here = kind
            spans.append(PhiSpan(start=start, end=end, kind=kind_here))
    return spans


def _name_spans(text: str) -> list[PhiSpan]:
    """Names by title, by cue word, and by dictionary (a known first name followed by a capitalised word)."""
    first, last = _name_lists()
    spans = [
        PhiSpan(start=match.start(1) + w.start(), end=match.start(1) + w.end(), kind=PhiType.NAME)
        for match in _AGE_SUBJECT.finditer(text)
        for w in _WORD.finditer(match.group(1))
        if w.group() not in _SUBJECTS
    ]
    for pattern in (_TITLE, _CUED, _BEFORE_CUE):
        for match in pattern.finditer(text):
            words = [w for w in _WORD.finditer(match.group(1)) if w.group() not in _NOT_NAMES]
            spans += [
                PhiSpan(start=match.start(1) + w.start(), end=match.start(1) + w.end(), kind=PhiType.NAME)
                for w in words
            ]
    words = list(_WORD.finditer(text))
    for here, following in itertools.pairwise(words):
        adjacent = text[here.end() : following.start()] in (" ", "-")
        given, family = _fold(here.group()), _fold(following.group())
        if adjacent and given in first and (family in last or family in first):
            spans.append(PhiSpan(start=here.start(), end=following.end(), kind=PhiType.NAME))
    for word in words:  # "Della is a 94 year-old ...": a known first name as the subject of a sentence
        if _fold(word.group()) in first and text.startswith(_VERB_AFTER, word.end()):
            spans.append(PhiSpan(start=word.start(), end=word.end(), kind=PhiType.NAME))
    return spans


def _propagate(text: str, spans: list[PhiSpan]) -> list[PhiSpan]:
    """A name found once is a name wherever the same word occurs in the note."""
    tokens = {w for s in spans if s.kind is PhiType.NAME for w in _WORD.findall(text[s.start : s.end])}
    more = [
        PhiSpan(start=m.start(), end=m.end(), kind=PhiType.NAME)
        for token in tokens - _SUBJECTS
        for m in re.finditer(rf"\b{re.escape(token)}\b", text)
    ]
    return spans + more


_PRIORITY = {kind: rank for rank, kind in enumerate(PhiType)}


def _resolve(spans: Iterable[PhiSpan]) -> tuple[PhiSpan, ...]:
    """Non-overlapping spans: the longest wins an overlap, then the earlier kind in :class:`PhiType`."""
    chosen: list[PhiSpan] = []
    for span in sorted(spans, key=lambda s: (-(s.end - s.start), _PRIORITY[s.kind], s.start)):
        if span.end > span.start and all(span.end <= c.start or span.start >= c.end for c in chosen):
            chosen.append(span)
    return tuple(sorted(chosen, key=lambda s: s.start))


def scrub(text: str) -> ScrubResult:
    """Find the identifiers in ``text`` and replace each with its surrogate (``[NAME]``, ``[DATE]``, ...)."""
    if not isinstance(text, str):
        raise DataError(f"a note must be text, got {type(text).__name__}")
    spans = _resolve(_propagate(text, _pattern_spans(text) + _name_spans(text)))
    pieces, cursor = [], 0
    for span in spans:
        pieces += [text[cursor : span.start], f"[{span.kind.value}]"]
        cursor = span.end
    pieces.append(text[cursor:])
    return ScrubResult(text="".join(pieces), spans=spans)


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteFeatures:
    """Bag-of-words counts of scrubbed notes: ``matrix[i, j]`` counts ``vocabulary[j]`` in note ``i``."""

    matrix: npt.NDArray[np.float32]
    vocabulary: tuple[str, ...]


_TOKEN = re.compile(r"[a-z][a-z]+")
_SURROGATE = re.compile(r"\[[A-Z]+\]")


def scrubbed_words(note: str) -> list[str]:
    """The lower-case words of ``note`` after :func:`scrub`: surrogates, digits and one-letter words dropped."""
    return _TOKEN.findall(_SURROGATE.sub(" ", scrub(note).text).lower())


def hashed_note_features(notes: Sequence[str], *, buckets: int) -> NoteFeatures:
    """Word counts of the scrubbed notes folded into ``buckets`` columns by a fixed hash.

    Every site with the same ``buckets`` computes the same columns without sharing a word list,
    and no column is named after a word: the names are ``word_hash_<i>``. The hash is BLAKE2b, not
    keyed, so columns agree across sites; a word the scrubber missed still reaches a bucket (the
    scrubber's recall is the guard, see ``docs/deidentification.md``).
    """
    if buckets < 1:
        raise ConfigError(f"buckets must be >= 1, got {buckets!r}")
    matrix = np.zeros((len(notes), buckets), dtype=np.float32)
    for i, note in enumerate(notes):
        for word, n in Counter(scrubbed_words(note)).items():
            matrix[i, _bucket(word, buckets)] += n
    width = len(str(buckets - 1))
    return NoteFeatures(matrix=matrix, vocabulary=tuple(f"word_hash_{j:0{width}d}" for j in range(buckets)))


@lru_cache(maxsize=1 << 16)
def _bucket(word: str, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big") % buckets


def note_features(
    notes: Sequence[str], *, vocabulary: Sequence[str] | None = None, max_features: int = 1000
) -> NoteFeatures:
    """Word counts of the notes *after* :func:`scrub`; surrogates and digits never become features.

    A federation should pass a shared ``vocabulary`` (for instance medical terms agreed in the job)
    so every site's columns mean the same; without one the ``max_features`` most frequent words of
    these notes are used, which is only for local work: that list itself is derived from the text.
    """
    if max_features < 1:
        raise ConfigError(f"max_features must be >= 1, got {max_features!r}")
    counted = [Counter(scrubbed_words(note)) for note in notes]
    if vocabulary is None:
        total: Counter[str] = Counter()
        for counts in counted:
            total.update(counts)
        vocabulary = sorted(word for word, _ in total.most_common(max_features))
    words = tuple(vocabulary)
    index = {word: j for j, word in enumerate(words)}
    matrix = np.zeros((len(counted), len(words)), dtype=np.float32)
    for i, counts in enumerate(counted):
        for word, n in counts.items():
            if (j := index.get(word)) is not None:
                matrix[i, j] = n
    return NoteFeatures(matrix=matrix, vocabulary=words)
