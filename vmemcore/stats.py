"""vmstat-style counters, named as the kernel names them (``mm/vmstat.c``) where it has a name,
and the one order every report lists them in (:data:`COUNTER_ORDER`, docs/scenarios.md#the-report)."""

from .geometry import LEVEL_NAMES
from .units import parse_size

# Kernel-named counters (/proc/vmstat, since 6.11): pages of struct-page metadata, not frames.
NR_MEMMAP_PAGES = "nr_memmap_pages"
NR_MEMMAP_BOOT_PAGES = "nr_memmap_boot_pages"

#: the counters ``vmemcore sweep`` shows when ``--y`` names none
SWEEP_COUNTERS = ("memmap_frames", "pagetable_frames")


#: The order of the counters in reports: the kernel's two, then the vmemmap page tables top down,
#: its leaves and the bytes they map largest first, frame owners, HVO, device-dax, the rest. A name
#: ending in "_" is a family (``vmemmap_leaves_2M``); a counter in no family comes last, by name.
COUNTER_ORDER = (
    NR_MEMMAP_BOOT_PAGES, NR_MEMMAP_PAGES,
    "vmemmap_pagetable_pages_", "vmemmap_leaves_", "vmemmap_mapped_bytes_", "vmemmap_list_entries", "vmemmap_list_pages",
    "memmap_frames", "pagetable_frames", "free_frames", "present_pages", "hugetlb_frames", "offline_frames",
    "kernel_image_frames",
    "nr_hugepages_", "surplus_hugepages_",
    "hvo_pmd_splits", "hvo_vmemmap_pages_freed", "hvo_vmemmap_pages_allocated", "hugetlb_restore_failures",
    "bad_page_reports", "bad_page_leaked_frames",
    "devdax_vmemmap_pages_mapped", "devdax_vmemmap_frames_used", "devdax_vmemmap_pages_saved",
    "vmemmap_offnode_entries", "altmap_not_fully_unmapped", "tlb_flush_all", "tlb_flush_kernel_range",
    "bbm_sequences", "bbm_entries", "cpu_pause_windows", "cont_spans_unfolded", "vmemmap_cont_spans",
    "vmemmap_tlb_entries", "live_entry_violations",
)


def counter_key(name) -> tuple:
    """Sort key of a counter name in :data:`COUNTER_ORDER`: page-table levels as ``LEVEL_NAMES``
    lists them (pgd first), leaf sizes largest first."""
    for rank, family in enumerate(COUNTER_ORDER):
        if name == family:
            return rank, 0, ""
        suffix = name[len(family):]
        if family.endswith("_") and name.startswith(family) and suffix:
            if family == "vmemmap_pagetable_pages_":
                return rank, LEVEL_NAMES.index(suffix) if suffix in LEVEL_NAMES else len(LEVEL_NAMES), suffix
            return rank, -parse_size(suffix), suffix
    return len(COUNTER_ORDER), 0, name


def ordered(counters) -> dict:
    """``counters`` (name -> value) in :data:`COUNTER_ORDER`."""
    return {name: counters[name] for name in sorted(counters, key=counter_key)}


class Counters:
    """Integer counters; changes are journaled so a failed operation leaves them as they were."""

    def __init__(self, journal=None):
        self._values = {NR_MEMMAP_PAGES: 0, NR_MEMMAP_BOOT_PAGES: 0}
        self.journal = journal

    def add(self, name, delta):
        if not delta:
            return
        if self.journal is not None and self.journal.first_change(self):  # saved whole, once a transaction
            self.journal.record(self._restore, dict(self._values))
        self._values[name] = self._values.get(name, 0) + delta

    def _restore(self, saved):
        self._values.clear()
        self._values.update(saved)

    def __getitem__(self, name):
        return self._values.get(name, 0)

    def as_dict(self):
        return dict(sorted(self._values.items()))
