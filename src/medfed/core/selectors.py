"""Which dataset a job uses at each site: by name, or by the tags sites gave their datasets.

A job spec says either ``dataset = "heart"`` (a site's dataset of that name) or
``dataset = { tags = ["cardiology", "adult"] }`` (the one dataset at each site that carries every
one of those tags, whatever the site called it). The coordinator uses the federation's catalog to
pick the sites with a match; each node resolves the selector against its *own* declarations (the
node decides), takes part with exactly one dataset, and refuses a selector that matches several,
naming them.

A selector travels as one line of text, its :attr:`DatasetSelector.label`: the dataset's name, or
``tags:<tag>,<tag>`` (sorted, lower case) — the form ``TaskMessage.dataset`` and ``JobSpec.dataset``
carry, so a name-selected job reads exactly as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from medfed.core.errors import ConfigError, DataError

__all__ = ["TAG_PREFIX", "DatasetSelector", "normalise_tag"]

#: What a tag selector's label starts with (a dataset name may not).
TAG_PREFIX = "tags:"
#: A tag: a short token (letters, digits, '.', '_', '-', ' ' inside).
_TAG = re.compile(r"[a-z0-9](?:[a-z0-9._ -]{0,62}[a-z0-9])?")


def normalise_tag(tag: str) -> str:
    """How tags compare: trimmed, lower case (``"Cardiology "`` and ``"cardiology"`` are one tag)."""
    return tag.strip().lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetSelector:
    """A dataset by ``name``, or by ``tags`` (every one of them, compared as :func:`normalise_tag` says).

    Build it with :meth:`by_name`, :meth:`by_tags` or :meth:`from_label`; exactly one of the two is set.
    """

    name: str = ""
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if bool(self.name) == bool(self.tags):
            problems.append("a dataset selector names a dataset or lists tags (exactly one of the two)")
        if self.name and (self.name != self.name.strip() or self.name.startswith(TAG_PREFIX)):
            problems.append(f"dataset name {self.name!r} has surrounding spaces or starts with {TAG_PREFIX!r}")
        bad = [t for t in self.tags if not _TAG.fullmatch(t)]
        if bad:
            problems.append(f"tags {bad} are not lower-case tokens (a-z, 0-9, '.', '_', '-', inner spaces; <= 64)")
        if list(self.tags) != sorted(set(self.tags)):
            problems.append(f"tags {list(self.tags)} must be sorted and unique (use DatasetSelector.by_tags)")
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def by_name(cls, name: str) -> DatasetSelector:
        return cls(name=name)

    @classmethod
    def by_tags(cls, tags: Sequence[str]) -> DatasetSelector:
        """Tags in any order and case; duplicates collapse."""
        return cls(tags=tuple(sorted({normalise_tag(t) for t in tags})))

    @classmethod
    def from_label(cls, label: str) -> DatasetSelector:
        """The selector a :attr:`label` stands for (``ConfigError`` if it is malformed)."""
        if label.startswith(TAG_PREFIX):
            return cls.by_tags([t for t in label[len(TAG_PREFIX) :].split(",") if t.strip()] or [""])
        return cls(name=label)

    @property
    def label(self) -> str:
        """One line of text that stands for this selector (the name itself for a name)."""
        return self.name or TAG_PREFIX + ",".join(self.tags)

    @property
    def by_tag(self) -> bool:
        return not self.name

    def describe(self) -> str:
        """For people: ``dataset 'heart'`` or ``datasets tagged ['adult', 'cardiology']``."""
        return f"dataset {self.name!r}" if self.name else f"datasets tagged {list(self.tags)}"

    def matches(self, name: str, tags: Sequence[str]) -> bool:
        """Whether a dataset called ``name`` carrying ``tags`` is selected."""
        if self.name:
            return name == self.name
        held = {normalise_tag(t) for t in tags}
        return all(t in held for t in self.tags)

    def candidates(self, datasets: Mapping[str, Sequence[str]]) -> list[str]:
        """The names in ``datasets`` (name -> its tags) this selector matches, sorted."""
        return sorted(n for n, tags in datasets.items() if self.matches(n, tags))

    def resolve(self, datasets: Mapping[str, Sequence[str]], *, site: str) -> str:
        """The one dataset of ``datasets`` (name -> its tags) at ``site`` that this selector picks.

        Raises
        ------
        DataError
            No dataset matches, or several do (naming them: the site's admin or the job's author
            must make the choice unambiguous).
        """
        found = self.candidates(datasets)
        if len(found) == 1:
            return found[0]
        if not found:
            raise DataError(f"site {site!r} has no {self.describe()} (it declares {sorted(datasets)})")
        raise DataError(
            f"site {site!r} has {len(found)} {self.describe()}: {found}; a job takes exactly one per site "
            "(add a tag that tells them apart, or select by name)"
        )
