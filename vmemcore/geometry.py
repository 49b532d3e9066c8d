"""Value types an architecture plugin answers with: its variants, page-table and sparse geometry.

Mirrors the constants of ``arch/*/include/asm/pgtable*.h`` and ``asm/sparsemem.h`` and the generic
ones of ``include/linux/mmzone.h`` (sections, sub-sections, pageblocks).
"""

from types import MappingProxyType

import attrs
from attrs import field, frozen

from .errors import did_you_mean
from .timeline import Change
from .units import format_size

SUBSECTION_SHIFT = 21  # include/linux/mmzone.h: 2 MiB on every architecture


def _positive(instance, attribute, value):
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


def _power_of_two(instance, attribute, value):
    if value <= 0 or value & (value - 1):
        raise ValueError(f"{attribute.name} must be a power of two, got {value}")


def _page_shift(instance, attribute, value):
    """Any power-of-two page size from 4 KiB up."""
    if not isinstance(value, int) or value < 12:
        raise ValueError(f"{attribute.name} must be an integer of at least 12 (4 KiB pages), got {value!r}")


LEVEL_NAMES = ("pgd", "p4d", "pud", "pmd", "pte")


def _level_name(instance, attribute, value):
    if value not in LEVEL_NAMES:
        raise ValueError(f"{attribute.name} must be one of {', '.join(LEVEL_NAMES)}, got {value!r}")


@frozen
class Level:
    """One level of a kernel page table, named as Linux names it (pgd, p4d, pud, pmd, pte)."""

    name: str = field(validator=_level_name)
    shift: int = field(validator=_positive)  # log2 of the virtual span one entry maps
    bits: int = field(validator=_positive)  # index bits: the table has 1 << bits entries
    table_bytes: int = field(validator=_positive)  # bytes of one table of this level
    # bytes one table takes from the allocator after boot: a page or more gives it frames of its
    # own; less makes it a fragment, page // alloc_bytes tables sharing a frame (vmemcore/pgalloc.py)
    alloc_bytes: int = field(validator=_power_of_two)
    leaf: bool = False  # may an entry of this level map memory directly (a block / huge leaf)?
    hw_name: str = ""  # the architecture's own name, e.g. "segment" or "region-third" on s390
    # entries of one contiguous span: arm64's contiguous bit (CONT_PTES / CONT_PMDS), riscv's
    # Svnapot, powerpc hash-4K's runs of entries; 1: none at this level
    contiguous: int = field(default=1, validator=_power_of_two)
    # bytes one table takes from memblock while booting (s390's vmem_pte_alloc: 2 KiB until
    # daa8af80d283); by default as after boot
    boot_alloc_bytes: int = field(validator=_power_of_two)

    @boot_alloc_bytes.default
    def _boot_alloc_bytes(self):
        return self.alloc_bytes

    @property
    def entries(self) -> int:
        return 1 << self.bits

    @property
    def entry_span(self) -> int:
        return 1 << self.shift

    @property
    def table_span(self) -> int:
        return 1 << (self.shift + self.bits)


@frozen
class PageTableGeometry:
    """The kernel page table that holds the vmemmap: levels from the top table down to the PTE."""

    page_shift: int = field(validator=_page_shift)
    va_bits: int = field(validator=_positive)
    levels: tuple = field(converter=tuple)

    @levels.validator
    def _check_levels(self, attribute, levels):
        if not levels or not all(isinstance(level, Level) for level in levels):
            raise ValueError("levels must be a non-empty sequence of Level, top table first")
        if levels[-1].name != "pte" or levels[-1].shift != self.page_shift or not levels[-1].leaf:
            raise ValueError("the last level must be the leaf-capable 'pte' level with shift == page_shift")
        for upper, lower in zip(levels, levels[1:]):
            if upper.shift != lower.shift + lower.bits:
                raise ValueError(
                    f"level {upper.name} has shift {upper.shift}, but {lower.name} below it spans "
                    f"{lower.shift + lower.bits} bits"
                )
        names = [level.name for level in levels]
        if len(set(names)) != len(names):
            raise ValueError(f"level names repeat: {names}")
        top = levels[0]
        if top.shift + top.bits < self.va_bits:
            raise ValueError(f"the top level covers {top.shift + top.bits} bits, less than va_bits {self.va_bits}")
        page = 1 << self.page_shift
        for level in levels[1:]:
            for name in ("alloc_bytes", "boot_alloc_bytes"):
                if getattr(level, name) < level.table_bytes:
                    raise ValueError(f"level {level.name}: {name} must hold a table ({level.table_bytes} bytes)")
                if getattr(level, name) > page and getattr(level, name) % page:
                    raise ValueError(f"level {level.name}: {name} above a page must be whole pages")

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @property
    def pmd_depth(self) -> int:
        """Index of the level just above the PTE: Linux's PMD (folded into the top table when
        there are only two levels, as on arm64 16K-36 and 64K-42)."""
        return len(self.levels) - 2

    @property
    def pmd(self) -> Level:
        return self.levels[self.pmd_depth]

    def maps(self, start: int, size: int) -> bool:
        """Does one page table of this geometry reach all of ``[start, start + size)``?"""
        span = self.levels[0].shift + self.levels[0].bits
        return start + size <= (start >> span << span) + (1 << span)

    def level(self, name: str) -> Level:
        for level in self.levels:
            if level.name == name:
                return level
        raise KeyError(f"this geometry has no {name!r} level (levels: {[lv.name for lv in self.levels]})")

    def index_of(self, name: str) -> int:
        return [level.name for level in self.levels].index(name)


@frozen
class SparseGeometry:
    """SPARSEMEM constants of an architecture (``asm/sparsemem.h``, ``mmzone.h``, memory block size)."""

    page_shift: int = field(validator=_page_shift)
    section_size_bits: int = field(validator=_positive)
    max_physmem_bits: int = field(validator=_positive)
    memory_block_size: int = field(validator=_power_of_two)
    vmemmap_base: int = field(validator=attrs.validators.ge(0))  # virtual address of pfn 0's struct page
    vmemmap_size: int = field(validator=_positive)  # bytes of virtual space reserved for the vmemmap
    pageblock_order: int = field(validator=attrs.validators.ge(0))
    max_page_order: int = field(validator=attrs.validators.ge(0))
    struct_page_size: int = field(default=64, validator=_positive)

    def __attrs_post_init__(self):
        if self.section_size_bits < SUBSECTION_SHIFT or self.section_size_bits > self.max_physmem_bits:
            raise ValueError("section_size_bits must lie between the sub-section shift (21) and max_physmem_bits")
        if self.memory_block_size < self.section_size:
            raise ValueError("memory_block_size must be at least one section")

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @property
    def section_size(self) -> int:
        return 1 << self.section_size_bits

    @property
    def pfn_section_shift(self) -> int:
        return self.section_size_bits - self.page_shift

    @property
    def pages_per_section(self) -> int:
        return 1 << self.pfn_section_shift

    @property
    def pages_per_subsection(self) -> int:
        return 1 << (SUBSECTION_SHIFT - self.page_shift)

    @property
    def subsections_per_section(self) -> int:
        return 1 << (self.section_size_bits - SUBSECTION_SHIFT)

    @property
    def nr_mem_sections(self) -> int:
        return 1 << (self.max_physmem_bits - self.section_size_bits)

    @property
    def max_pfn(self) -> int:
        return 1 << (self.max_physmem_bits - self.page_shift)

    @property
    def section_memmap_bytes(self) -> int:
        return self.pages_per_section * self.struct_page_size

    def pfn_to_page(self, pfn: int) -> int:
        """Virtual address of the struct page of ``pfn`` (``pfn_to_page`` with SPARSEMEM_VMEMMAP)."""
        return self.vmemmap_base + pfn * self.struct_page_size

    def page_to_pfn(self, vaddr: int) -> int:
        return (vaddr - self.vmemmap_base) // self.struct_page_size

    @property
    def vmemmap_max_pfn(self) -> int:
        """One past the last pfn whose struct page fits ``[vmemmap_base, vmemmap_base + vmemmap_size)``."""
        return self.vmemmap_size // self.struct_page_size


@frozen
class Variant:
    """One configuration an arch plugin offers, such as x86_64 ``5-level`` or arm64 ``16K-47``."""

    name: str
    options: MappingProxyType = field(converter=lambda d: MappingProxyType(dict(d)), eq=False, hash=False)
    _options_key: tuple = field(init=False, repr=False)
    description: str = field(default="", eq=False)

    @_options_key.default
    def _key(self):
        return tuple(sorted(self.options.items()))

    def matches(self, wanted) -> bool:
        """True if ``wanted`` (a variant name or a dict of options) selects this variant."""
        if isinstance(wanted, str):
            return wanted == self.name
        return all(str(self.options.get(key)) == str(value) for key, value in dict(wanted).items())


@frozen
class Feature:
    """A CPU or firmware feature the machine may have (x86_64 ``pse``), with its default."""

    name: str
    default: bool
    description: str = ""


@frozen
class Firmware:
    """A size the machine's firmware describes to the kernel (powerpc's ``ibm,lmb-size``), with its
    default; None stands for "not described" (the property or its node is absent)."""

    name: str
    default: int | None
    description: str = ""


@frozen
class ArchInfo:
    """What ``vmemcore_arch_info`` returns: the arch's name, its variants and machine features, and
    the dated kernel changes (:class:`~vmemcore.timeline.Change`) its hooks follow, listed by
    ``vmemcore profiles --arch``."""

    name: str = field(validator=attrs.validators.matches_re(r"^[a-z0-9_]+$"))
    description: str
    variants: tuple = field(converter=tuple)
    default_variant: str
    features: tuple = field(default=(), converter=tuple)
    changes: tuple = field(default=(), converter=tuple)
    firmware: tuple = field(default=(), converter=tuple)  # Firmware values: [machine] firmware
    # where the kernel image runs without KASLR (x86_64 CONFIG_PHYSICAL_START); None: the start of RAM
    kernel_start: int | None = field(default=None, validator=attrs.validators.optional(attrs.validators.ge(0)))

    def __attrs_post_init__(self):
        if not self.variants or not all(isinstance(v, Variant) for v in self.variants):
            raise ValueError("variants must be a non-empty sequence of Variant")
        if self.default_variant not in {v.name for v in self.variants}:
            raise ValueError(f"default_variant {self.default_variant!r} is not one of the variants")
        if not all(isinstance(f, Feature) for f in self.features):
            raise ValueError("features must be Feature values")
        if not all(isinstance(f, Firmware) for f in self.firmware):
            raise ValueError("firmware must be Firmware values")
        if not all(isinstance(c, Change) for c in self.changes):
            raise ValueError("changes must be Change values (vmemcore.arch.Change)")
        names = [c.name for c in self.changes]
        if len(set(names)) != len(names):
            raise ValueError(f"two changes share a name: {', '.join(sorted(n for n in set(names) if names.count(n) > 1))}")

    def variant(self, wanted=None) -> Variant:
        """The variant ``wanted`` names (a name or an options dict); the default when None."""
        if wanted is None:
            wanted = self.default_variant
        found = [v for v in self.variants if v.matches(wanted)]
        if not found:
            names = ", ".join(v.name for v in self.variants)
            hint = did_you_mean(wanted, [v.name for v in self.variants]) if isinstance(wanted, str) else ""
            raise ValueError(f"{self.name} has no variant {wanted!r} (variants: {names}){hint}")
        if len(found) > 1 and not isinstance(wanted, str):
            default = [v for v in found if v.name == self.default_variant]
            if default:
                return default[0]
        return found[0]


def describe_geometry(pt: PageTableGeometry, sparse: SparseGeometry) -> list:
    """Rows (label, value) describing a geometry for ``vmemcore arches ARCH``."""
    rows = [
        ("page size", format_size(pt.page_size)),
        ("virtual address bits", str(pt.va_bits)),
        ("page-table levels", str(len(pt.levels))),
    ]
    for level in pt.levels:
        name = level.name + (f" ({level.hw_name})" if level.hw_name else "")
        rows.append((
            f"  {name}",
            f"shift {level.shift}, {level.entries} entries, table {format_size(level.table_bytes)}"
            f" (allocated {format_size(level.alloc_bytes)}"
            + (f", {format_size(level.boot_alloc_bytes)} at boot" if level.boot_alloc_bytes != level.alloc_bytes else "")
            + f"), entry maps {format_size(level.entry_span)}"
            + (", may hold leaves" if level.leaf else "")
            + (f", contiguous spans of {level.contiguous}" if level.contiguous > 1 else ""),
        ))
    rows += [
        ("section size", f"{format_size(sparse.section_size)} (SECTION_SIZE_BITS {sparse.section_size_bits})"),
        ("max physical address bits", str(sparse.max_physmem_bits)),
        ("memory block size", format_size(sparse.memory_block_size)),
        ("vmemmap base", hex(sparse.vmemmap_base)),
        ("vmemmap size", format_size(sparse.vmemmap_size)),
        ("struct page", f"{sparse.struct_page_size} bytes"),
        ("memmap per section", format_size(sparse.section_memmap_bytes)),
        ("pageblock order", str(sparse.pageblock_order)),
        ("MAX_PAGE_ORDER", str(sparse.max_page_order)),
    ]
    return rows


@frozen
class HugePageSize:
    """A HugeTLB page size the arch offers and how it is mapped (``arch_hugetlb_valid_size``)."""

    size: int = field(validator=_power_of_two)
    level: str = field(validator=_level_name)
    contiguous: int = field(default=1, validator=_power_of_two)  # entries of a contiguous-bit span
    # mapped by a hugepd directory hanging off an entry of ``level`` (powerpc hash-4K before 6.12)
    directory: bool = False

    @property
    def name(self) -> str:
        return format_size(self.size)


@frozen
class Support:
    """A yes (``reason``: an optional caveat, such as a rule the kernel's mechanism is known to
    break), or a no with the kernel's reason (an arch answering whether it has a mechanism)."""

    supported: bool
    reason: str = ""

    def __attrs_post_init__(self):
        if not self.supported and not self.reason:
            raise ValueError("a refusal must say why")


@frozen
class PhysRange:
    """A physical address range ``[start, end)`` in bytes (``struct range``, end exclusive here)."""

    start: int = field(validator=attrs.validators.ge(0))
    end: int

    def __attrs_post_init__(self):
        if self.end <= self.start:
            raise ValueError(f"a physical range must end after it starts, got [{self.start:#x}, {self.end:#x})")

    def holds(self, start: int, end: int) -> bool:
        return self.start <= start and end <= self.end
