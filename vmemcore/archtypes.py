"""The value types an arch plugin answers with that the engine's numpy modules share, kept free
of numpy so that discovering plugins (``vmemcore arches``) and the command line's help load none:
page-table entry bits (``pagetable``), the live-entry rule (``live_entries``), the teardown
policy (``depopulate``) and the page-table dump format (``ptdump``): those modules import them
from here, and plugins take them from :mod:`vmemcore.arch`.
"""

import enum
from enum import StrEnum

import attrs

NUMA_NO_NODE = -1  # allocations from any node, lowest id first; nothing to verify

PRESENT = 1
LEAF = 2  # the entry maps memory (a page at PTE level, a block above); else it points to a table
RDONLY = 4
CONT = 8  # arm64 contiguous hint


ALL_FLAGS = 0xFF


@attrs.frozen
class LiveEntryRule:
    """What may change in a live (valid) entry in place, without break-before-make."""

    output: bool = True  # the output address may change (and a block may become a table)
    flags: int = ALL_FLAGS  # flag bits that may change (pagetable.RDONLY, pagetable.CONT)
    contiguous: bool = True  # an entry with the contiguous bit may change at all
    bbml2: bool = False  # the CPU may offer FEAT_BBM level 2 (arm64)
    reason: str = "a live entry may be rewritten in place"

    @property
    def strict(self) -> bool:
        """Does anything need break-before-make under this rule?"""
        return not (self.output and self.flags == ALL_FLAGS and self.contiguous)


ANY_CHANGE = LiveEntryRule()


class RemapStrategy(StrEnum):
    """How HVO writes live vmemmap entries (a what-if unless ``plain``)."""

    PLAIN = "plain"  # in place, as the kernel does
    BBM_PAUSED = "bbm-paused"  # break-before-make of each run of entries, the other CPUs paused
    BBML2 = "bbml2"  # in place, relying on FEAT_BBM level 2 and identical page contents


class InUse(enum.Enum):
    """How a leaf the range covers only in part is judged still used (then it is kept)."""

    NEVER = "freed whole (arm64 free_hotplug_page_range)"
    SUB_PMD = "sub-PMD PAGE_UNUSED marks (x86/s390 vmemmap_pmd_is_unused)"
    PFN_VALID = "a served sub-section is still pfn_valid (powerpc vmemmap_populated)"


class Flush(enum.Enum):
    """A TLB flush the walk issues (counted as ``tlb_flush_all`` / ``tlb_flush_kernel_range``)."""

    NONE = "none"
    ALL = "flush_tlb_all"
    RANGE = "flush_tlb_kernel_range"


@attrs.frozen
class TeardownPolicy:
    """The arch's answers to the teardown walk's questions.

    ``in_use``: how a partly covered leaf is judged (:class:`InUse`). ``free_tables``: the level
    names whose tables are freed once empty (None: every level below the top). ``floor`` and
    ``ceiling``: freed tables' spans must lie inside ``[floor, ceiling)`` (arm64's
    ``pgtable_range_aligned`` with ``VMEMMAP_START``/``VMEMMAP_END``); None: no bound.
    ``flush_leaf``: a flush after each leaf cleared (arm64); ``flush_pte_table``: after each PTE
    table (x86 ``remove_pte_table``); ``flush_end``: one flush of the whole range at the end.
    """

    in_use: InUse = InUse.NEVER
    free_tables: frozenset | None = attrs.field(default=None, converter=lambda v: None if v is None else frozenset(v))
    floor: int | None = None
    ceiling: int | None = None
    flush_leaf: Flush = Flush.NONE
    flush_pte_table: Flush = Flush.NONE
    flush_end: Flush = Flush.NONE


#: The entry properties a :class:`PtdumpColumn` can test.
BITS = ("rdonly", "cont", "block", "page")


@attrs.frozen
class PtdumpColumn:
    """One attribute column of a present entry: ``set`` when the entry has ``bit``, else ``clear``
    (``bit`` None: always ``set``; the vmemmap's constant attributes such as x86 ``GLB``).

    ``bit``: ``"rdonly"`` (read-only), ``"cont"`` (the contiguous bit), ``"block"`` (a leaf above
    the lowest level: x86 ``PSE``, arm64 ``BLK``), ``"page"`` (a leaf at the lowest level)."""

    set: str
    clear: str = ""
    bit: str | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.in_(BITS)))


def _names(value):
    return tuple(sorted(dict(value).items()))


def _template(instance, attribute, value):
    try:
        value.format(start=0, end=0, last=0, phys="", size="", level="", attrs="", pa=0)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"PtdumpFormat.{attribute.name}: {value!r} is not a valid template ({error})") from None


@attrs.frozen
class PtdumpFormat:
    """How an arch prints its kernel page tables (``vmemcore_ptdump_format``).

    - ``line``: the layout of one run, a ``str.format`` template with the fields ``start``, ``end``
      (one past the run), ``last`` (the run's last byte: powerpc), ``phys`` (the physical address
      text, empty when not shown), ``size`` (``%9lu%c``: ``"      256M"``), ``level`` (the level's
      name) and ``attrs`` (the columns, or ``hole`` for an empty run);
    - ``columns``: the attribute columns of a present entry, concatenated as given;
    - ``level_names``: the printed name of each geometry level (a mapping; a level not named
      prints as the geometry names it);
    - ``hole``: the ``attrs`` of an empty run, or None when the arch prints no line for it
      (powerpc, riscv);
    - ``markers``: the names of the marker lines (``---[ NAME ]---``) before the vmemmap and,
      when the arch has one, at its end;
    - ``phys`` / ``shared_phys``: the ``phys`` text of a run (``{pa}``: its first physical
      address), and of a run of entries that all map one page (powerpc ``[pa]``);
    - ``always_phys``: the kernel prints the physical address (powerpc, riscv), not only
      ``--phys``; ``phys_breaks``: a physical address that does not follow on ends a run
      (powerpc; riscv prints only the run's first); ``shared_size``: a run mapping one page prints
      one page's size (powerpc).
    - ``source``: the kernel file the format follows.
    """

    line: str = attrs.field(validator=_template)
    columns: tuple = attrs.field(converter=tuple, default=(PtdumpColumn("ro", "RW", "rdonly"),))
    level_names: tuple = attrs.field(converter=_names, factory=dict)
    hole: str | None = ""
    markers: tuple = attrs.field(converter=tuple, default=("vmemmap", None))
    phys: str = attrs.field(default="0x{pa:016x} ", validator=_template)
    shared_phys: str = attrs.field(default="[0x{pa:016x}] ", validator=_template)
    always_phys: bool = False
    phys_breaks: bool = True
    shared_size: bool = False
    source: str = ""

    @columns.validator
    def _columns(self, attribute, value):
        if not all(isinstance(column, PtdumpColumn) for column in value):
            raise ValueError("PtdumpFormat.columns holds something other than PtdumpColumn")

    @markers.validator
    def _markers(self, attribute, value):
        if len(value) != 2 or not isinstance(value[0], str):
            raise ValueError("PtdumpFormat.markers is (name at the start, name at the end or None)")

    def level_name(self, name) -> str:
        return dict(self.level_names).get(name, name)


#: The format when no plugin gives one: the layout the dumpers share, read-write or read-only.
GENERIC = PtdumpFormat(
    line="0x{start:016x}-0x{end:016x}   {phys}{size} {level} {attrs}",
    columns=(PtdumpColumn("ro", "RW", "rdonly"), PtdumpColumn(" CON", "", "cont")),
    source="the layout of note_page() every arch shares (no arch format given)",
)
