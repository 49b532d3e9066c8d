"""Geometry of the arch plugins against the kernel numbers (the arch headers named in each part below;
docs/kernel-map.md#per-arch-constants and #boot-populate-shapes).

Every expected value is written out from the kernel's constants, never recomputed the way the plugin
computes it, so a wrong formula in a plugin shows up as a wrong number here.
"""

import pytest
import vmemcore_arm64
import vmemcore_powerpc
import vmemcore_s390
import vmemcore_x86_64

import vmemcore
from vmemcore import GiB, KiB, MiB, PiB, TiB
from vmemcore.plugins import ArchHooks, Registry

MODULES = {"x86_64": vmemcore_x86_64, "arm64": vmemcore_arm64, "powerpc": vmemcore_powerpc, "s390": vmemcore_s390}


def geometry(arch, variant, profile="6.12"):
    hooks = ArchHooks(arch, MODULES[arch])
    v = hooks.info.variant(variant)
    p = vmemcore.get_profile(profile)
    return hooks.pagetable_geometry(v, p), hooks.sparse_geometry(v, p)


def shape(pt):
    """(name, shift, entries, table bytes) per level, top first."""
    return [(lv.name, lv.shift, lv.entries, lv.table_bytes) for lv in pt.levels]


def test_registry_finds_all_four_arches():
    registry = Registry()
    assert registry.errors == []
    assert {"x86_64", "arm64", "powerpc", "s390"} <= set(registry.arches)


@pytest.mark.parametrize(
    "arch, default", [("x86_64", "4-level"), ("arm64", "4K-48"), ("powerpc", "radix-64K"), ("s390", "3-level")]
)
def test_default_variants(arch, default):
    assert ArchHooks(arch, MODULES[arch]).info.variant().name == default


# --------------------------------------------- x86_64 (arch/x86/include/asm/pgtable_64_types.h, sparsemem.h)

def test_x86_64_4level():
    pt, sp = geometry("x86_64", "4-level")
    assert shape(pt) == [("pgd", 39, 512, 4096), ("pud", 30, 512, 4096), ("pmd", 21, 512, 4096), ("pte", 12, 512, 4096)]
    assert pt.va_bits == 48
    assert sp.max_physmem_bits == 46
    assert sp.vmemmap_base == 0xFFFFEA0000000000
    assert sp.vmemmap_size == 1 * TiB
    # 1 TiB of vmemmap is exactly the memmap of 2**46 bytes
    assert sp.max_pfn * sp.struct_page_size == 1 * TiB
    assert (sp.section_size, sp.pages_per_section, sp.section_memmap_bytes) == (128 * MiB, 32768, 2 * MiB)
    assert sp.pageblock_order == 9 and sp.max_page_order == 10


def test_x86_64_5level():
    pt, sp = geometry("x86_64", "5-level")
    assert [lv.name for lv in pt.levels] == ["pgd", "p4d", "pud", "pmd", "pte"]
    assert pt.level("pgd").shift == 48 and pt.level("p4d").shift == 39
    assert pt.va_bits == 57
    assert sp.max_physmem_bits == 52
    assert sp.vmemmap_base == 0xFFD4000000000000
    assert sp.vmemmap_size == 512 * TiB
    assert sp.nr_mem_sections == 1 << 25  # 2**(52 - 27)


# ------------------------------------- arm64 (arch/arm64/include/asm/pgtable-hwdef.h, memory.h, sparsemem.h)

# (granule, VA bits): shifts top→PTE, PGD entries, bytes of every other table   (CONFIG_PGTABLE_LEVELS defaults)
ARM64_TABLE = {
    ("4K", 39): ([30, 21, 12], 512, 4 * KiB),
    ("4K", 48): ([39, 30, 21, 12], 512, 4 * KiB),
    ("4K", 52): ([48, 39, 30, 21, 12], 16, 4 * KiB),
    ("16K", 36): ([25, 14], 2048, 16 * KiB),
    ("16K", 47): ([36, 25, 14], 2048, 16 * KiB),
    ("16K", 48): ([47, 36, 25, 14], 2, 16 * KiB),
    ("16K", 52): ([47, 36, 25, 14], 32, 16 * KiB),
    ("64K", 42): ([29, 16], 8192, 64 * KiB),
    ("64K", 48): ([42, 29, 16], 64, 64 * KiB),
    ("64K", 52): ([42, 29, 16], 1024, 64 * KiB),
}
ARM64_NAMES = {
    2: ["pgd", "pte"], 3: ["pgd", "pmd", "pte"], 4: ["pgd", "pud", "pmd", "pte"], 5: ["pgd", "p4d", "pud", "pmd", "pte"]
}


def test_arm64_offers_exactly_the_table_variants():
    info = ArchHooks("arm64", vmemcore_arm64).info
    assert sorted(v.name for v in info.variants) == sorted(f"{g}-{va}" for g, va in ARM64_TABLE)
    assert info.variant({"page": "16K", "va_bits": "47"}).name == "16K-47"


@pytest.mark.parametrize("granule, va", list(ARM64_TABLE))
def test_arm64_pagetable(granule, va):
    shifts, pgd_entries, table = ARM64_TABLE[(granule, va)]
    pt, _ = geometry("arm64", f"{granule}-{va}")
    page = {"4K": 4 * KiB, "16K": 16 * KiB, "64K": 64 * KiB}[granule]
    assert pt.page_size == page and pt.va_bits == va
    assert [lv.name for lv in pt.levels] == ARM64_NAMES[len(shifts)]
    assert [lv.shift for lv in pt.levels] == shifts
    top, lower = pt.levels[0], pt.levels[1:]
    assert top.entries == pgd_entries and top.table_bytes == pgd_entries * 8
    assert top.shift + top.bits == va
    for lv in lower:
        assert (lv.table_bytes, lv.alloc_bytes, lv.entries) == (table, table, table // 8)


@pytest.mark.parametrize("variant, leaves", [
    ("4K-39", {30, 21, 12}),          # 3 levels: the top is the folded PUD, 1 GiB blocks allowed with 4K
    ("4K-48", {30, 21, 12}),          # PUD 1 GiB, PMD 2 MiB
    ("4K-52", {30, 21, 12}),
    ("16K-36", {25, 14}),             # the top is the folded PMD: 32 MiB blocks
    ("16K-48", {25, 14}),             # no PUD blocks with 16K
    ("64K-48", {29, 16}),             # PMD 512 MiB
    ("64K-52", {29, 16}),
])
def test_arm64_leaves(variant, leaves):
    pt, _ = geometry("arm64", variant)
    assert {lv.shift for lv in pt.levels if lv.leaf} == leaves


@pytest.mark.parametrize(
    "granule, pmd_leaf, pte_table_span",
    [("4K", 2 * MiB, 2 * MiB), ("16K", 32 * MiB, 32 * MiB), ("64K", 512 * MiB, 512 * MiB)],
)
def test_arm64_pmd_block_and_pte_table_span(granule, pmd_leaf, pte_table_span):
    pt, _ = geometry("arm64", {"4K": "4K-48", "16K": "16K-47", "64K": "64K-48"}[granule])
    assert pt.level("pmd").entry_span == pmd_leaf
    assert pt.level("pte").table_span == pte_table_span  # 16K PTE table = 32 MiB of VA, 64K = 512 MiB


# (section, pages/section, memmap/section, pageblock order, MAX_PAGE_ORDER)   (docs/kernel-map.md#per-arch-constants)
ARM64_SPARSE = {
    "4K": (128 * MiB, 32768, 2 * MiB, 9, 10),
    "16K": (128 * MiB, 8192, 512 * KiB, 11, 11),
    "64K": (512 * MiB, 8192, 512 * KiB, 13, 13),
}


@pytest.mark.parametrize("granule, va", list(ARM64_TABLE))
@pytest.mark.parametrize("profile", ["6.12", "7.1"])
def test_arm64_sparse(granule, va, profile):
    section, pages, memmap, pageblock, max_order = ARM64_SPARSE[granule]
    _, sp = geometry("arm64", f"{granule}-{va}", profile)
    assert (sp.section_size, sp.pages_per_section, sp.section_memmap_bytes) == (section, pages, memmap)
    assert sp.memory_block_size == section
    assert (sp.pageblock_order, sp.max_page_order) == (pageblock, max_order)
    assert sp.max_physmem_bits == (52 if va == 52 else 48)
    assert sp.vmemmap_base + sp.vmemmap_size == 0xFFFFFFFFC0000000  # VMEMMAP_END = -1 GiB


@pytest.mark.parametrize("variant, size", [
    ("4K-48", 2 * TiB),                    # memory.h VMEMMAP_SIZE: 2 TiB for 4K/48-bit
    ("4K-39", 4 * GiB),                    # 2**38 of linear map / 4 KiB x 64 B
    ("16K-36", 128 * MiB),
    ("16K-47", 256 * GiB),
    ("16K-48", 512 * GiB),
    ("64K-42", 2 * GiB),
    ("64K-48", 128 * GiB),
    # 52-bit: from the 52-bit PAGE_OFFSET up to _PAGE_END(VA_BITS_MIN), i.e. 2**52 - 2**(VA_BITS_MIN - 1)
    ("4K-52", 64 * TiB - 2 * TiB),
    ("16K-52", 16 * TiB - 256 * GiB),
    ("64K-52", 4 * TiB - 128 * GiB),
])
def test_arm64_vmemmap_size(variant, size):
    _, sp = geometry("arm64", variant)
    assert sp.vmemmap_size == size


def test_arm64_4k48_vmemmap_start():
    _, sp = geometry("arm64", "4K-48")
    assert sp.vmemmap_base == 0xFFFFFDFFC0000000


def test_arm64_64k_memory_block_memmap_is_8_pages():
    _, sp = geometry("arm64", "64K-48")  # 512 MiB block → 512 KiB memmap = 8 pages of 64 KiB
    assert sp.memory_block_size // sp.page_size * sp.struct_page_size // sp.page_size == 8


# ----------------------------- powerpc (arch/powerpc/include/asm/book3s/64/radix-*.h, hash-*.h, sparsemem.h)

# (PTE, PMD, PUD, PGD) index bits; table bytes; PMD_SHIFT; VA bits
PPC_TABLE = {
    "radix-4K": ((9, 9, 9, 13), (4 * KiB, 4 * KiB, 4 * KiB, 64 * KiB), 21, 52),
    "radix-64K": ((5, 9, 9, 13), (256, 4 * KiB, 4 * KiB, 64 * KiB), 21, 52),
    "hash-4K": ((9, 7, 9, 9), (4 * KiB, 1 * KiB, 4 * KiB, 4 * KiB), 21, 46),
    "hash-64K": ((8, 10, 10, 8), (2 * KiB, 8 * KiB, 8 * KiB, 2 * KiB), 24, 52),
}


@pytest.mark.parametrize("variant", list(PPC_TABLE))
def test_powerpc_pagetable(variant):
    index, tables, pmd_shift, va = PPC_TABLE[variant]
    pt, _ = geometry("powerpc", variant)
    by_name = {lv.name: lv for lv in pt.levels}
    assert [lv.name for lv in pt.levels] == ["pgd", "pud", "pmd", "pte"]
    assert tuple(by_name[n].bits for n in ("pte", "pmd", "pud", "pgd")) == index
    assert tuple(by_name[n].table_bytes for n in ("pte", "pmd", "pud", "pgd")) == tables
    assert by_name["pmd"].shift == pmd_shift
    assert pt.va_bits == va
    assert pt.levels[0].shift + pt.levels[0].bits >= va


def test_powerpc_radix_64k_pte_fragment_takes_a_page_at_boot():
    pt, _ = geometry("powerpc", "radix-64K")
    assert pt.level("pte").table_bytes == 256
    assert pt.level("pte").alloc_bytes == 64 * KiB
    assert pt.level("pte").table_span == 2 * MiB


@pytest.mark.parametrize("variant", ["radix-4K", "radix-64K"])
def test_powerpc_radix_leaves(variant):
    pt, _ = geometry("powerpc", variant)
    assert {lv.entry_span for lv in pt.levels if lv.leaf and lv.name != "pte"} == {2 * MiB, 1 * GiB}


@pytest.mark.parametrize("variant, spans", [("hash-4K", {2 * MiB, 256 * MiB}), ("hash-64K", {16 * MiB, 16 * GiB})])
def test_powerpc_hash_upper_leaves_are_hugetlb_entries(variant, spans):
    """Hash's Linux page table holds HugeTLB leaves at PMD and PUD (16M/16G on 64K; on 4K since 6.12
    as 8 and 64 contiguous entries); its vmemmap is elsewhere (bolted HPTEs)."""
    pt, _ = geometry("powerpc", variant)
    assert {lv.entry_span for lv in pt.levels if lv.leaf and lv.name != "pte"} == spans


# pages/section, memmap/section, pageblock order, MAX_PAGE_ORDER, MAX_PHYSMEM_BITS, vmemmap base, size
PPC_SPARSE = {
    "radix-4K": (4096, 256 * KiB, 9, 12, 51, 0xC00C000000000000, 512 * TiB),
    "radix-64K": (256, 16 * KiB, 5, 8, 51, 0xC00C000000000000, 512 * TiB),
    "hash-4K": (4096, 256 * KiB, 12, 12, 46, 0xC0003F0000000000, 1 * TiB),
    "hash-64K": (256, 16 * KiB, 8, 8, 51, 0xC00C000000000000, 512 * TiB),
}


@pytest.mark.parametrize("variant", list(PPC_SPARSE))
@pytest.mark.parametrize("profile", ["6.12", "7.1"])
def test_powerpc_sparse(variant, profile):
    pages, memmap, pageblock, max_order, phys, base, size = PPC_SPARSE[variant]
    _, sp = geometry("powerpc", variant, profile)
    assert sp.section_size == 16 * MiB
    assert (sp.pages_per_section, sp.section_memmap_bytes) == (pages, memmap)
    assert (sp.pageblock_order, sp.max_page_order) == (pageblock, max_order)
    assert sp.max_physmem_bits == phys
    assert (sp.vmemmap_base, sp.vmemmap_size) == (base, size)
    assert sp.memory_block_size == 256 * MiB


def test_powerpc_pageblocks_are_2m_radix_16m_hash():
    sizes = {v: geometry("powerpc", v)[1] for v in PPC_TABLE}
    assert {v: sp.page_size << sp.pageblock_order for v, sp in sizes.items()} == {
        "radix-4K": 2 * MiB, "radix-64K": 2 * MiB, "hash-4K": 16 * MiB, "hash-64K": 16 * MiB,
    }


@pytest.mark.parametrize("variant, sections", [("radix-64K", 128), ("radix-4K", 8)])
def test_powerpc_radix_pmd_leaf_covers_sections(variant, sections):
    pt, sp = geometry("powerpc", variant)  # one 2 MiB leaf = 128 (64K) or 8 (4K) sections
    assert pt.level("pmd").entry_span // sp.section_memmap_bytes == sections


def test_powerpc_radix_64k_lmb_memmap_is_4_pages():
    _, sp = geometry("powerpc", "radix-64K")  # 256 MiB LMB → 4096 pages, 256 KiB memmap = 4 pages
    assert sp.memory_block_size // sp.page_size == 4096
    assert sp.memory_block_size // sp.page_size * sp.struct_page_size == 256 * KiB


@pytest.mark.parametrize("variant", list(PPC_SPARSE))
def test_powerpc_vmemmap_region_holds_max_physmem(variant):
    _, sp = geometry("powerpc", variant)
    assert sp.max_pfn * sp.struct_page_size <= sp.vmemmap_size


# -------------------------------------------- s390 (arch/s390/include/asm/pgtable.h, pgalloc.h, sparsemem.h)

S390_LEVELS = {
    "3-level": [("pgd", 31, "region-third"), ("pmd", 20, "segment"), ("pte", 12, "page")],
    "4-level": [("pgd", 42, "region-second"), ("pud", 31, "region-third"), ("pmd", 20, "segment"), ("pte", 12, "page")],
}


@pytest.mark.parametrize("variant", list(S390_LEVELS))
def test_s390_pagetable(variant):
    pt, _ = geometry("s390", variant)
    assert [(lv.name, lv.shift, lv.hw_name) for lv in pt.levels] == S390_LEVELS[variant]
    for lv in pt.levels[:-1]:  # CRST tables
        assert (lv.entries, lv.table_bytes, lv.alloc_bytes) == (2048, 16 * KiB, 16 * KiB)
    pte = pt.level("pte")
    assert (pte.entries, pte.table_bytes, pte.alloc_bytes) == (256, 2 * KiB, 4 * KiB)
    assert pte.table_span == 1 * MiB


def test_s390_address_space_limits():
    pt3, _ = geometry("s390", "3-level")
    pt4, _ = geometry("s390", "4-level")
    assert (pt3.va_bits, pt3.levels[0].table_span) == (42, 4 * TiB)
    assert (pt4.va_bits, pt4.levels[0].table_span) == (53, 8 * PiB)


@pytest.mark.parametrize("variant", list(S390_LEVELS))
def test_s390_leaves(variant):
    pt, _ = geometry("s390", variant)
    spans = {lv.hw_name: lv.entry_span for lv in pt.levels if lv.leaf}
    assert spans == {"region-third": 2 * GiB, "segment": 1 * MiB, "page": 4 * KiB}


def test_s390_features():
    info = ArchHooks("s390", vmemcore_s390).info
    assert {(f.name, f.default) for f in info.features} == {("edat1", True), ("edat2", True)}


@pytest.mark.parametrize("profile, section, pages, memmap", [
    ("6.12", 256 * MiB, 65536, 4 * MiB),
    ("6.19", 128 * MiB, 32768, 2 * MiB),
    ("7.1", 128 * MiB, 32768, 2 * MiB),
])
@pytest.mark.parametrize("variant", list(S390_LEVELS))
def test_s390_sparse(variant, profile, section, pages, memmap):
    _, sp = geometry("s390", variant, profile)
    assert (sp.section_size, sp.pages_per_section, sp.section_memmap_bytes) == (section, pages, memmap)
    assert sp.memory_block_size == section
    assert sp.max_physmem_bits == 46
    assert (sp.pageblock_order, sp.max_page_order) == (8, 10)
    assert sp.page_size << sp.pageblock_order == 1 * MiB


@pytest.mark.parametrize("variant", list(S390_LEVELS))
def test_s390_vmemmap_placement(variant):
    pt, sp = geometry("s390", variant)
    # aligned to a region-third entry: the top-level one with 3 levels, and with 4 since 6.10 when the
    # kernel image is not above 4 TiB (setup_kernel_memory_layout's rte_size)
    assert sp.vmemmap_base % (2 * GiB) == 0
    assert sp.vmemmap_base + sp.vmemmap_size <= 1 << pt.va_bits   # inside the ASCE limit
    # at most the memmap of 2**46 bytes (1 TiB); the numbers are in tests/test_s390_vmemmap_base.py
    assert sp.vmemmap_size <= 1 * TiB == sp.max_pfn * sp.struct_page_size


def test_s390_64g_boot_shape_numbers():
    # docs/kernel-map.md#boot-populate-shapes: 64 GiB → 1 GiB memmap → 1024 segment leaves under one segment table
    pt, sp = geometry("s390", "3-level", "7.1")
    memmap = 64 * GiB // sp.page_size * sp.struct_page_size
    assert memmap == 1 * GiB
    assert memmap // pt.level("pmd").entry_span == 1024
    assert pt.level("pmd").table_span == 2 * GiB
