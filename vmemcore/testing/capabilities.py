"""What an architecture offers on one variant and kernel profile, from its own hook answers.

The conformance suite applies a check by capability (HVO, device-dax dedup, memmap_on_memory,
memory hotplug, ZONE_DEVICE, contiguous HugeTLB sizes), never by arch name; ``vmemcore
capabilities`` prints the same answers. A capability the arch does not offer carries the kernel's
reason, as the plugin gave it.
"""

import attrs

from ..errors import PluginError, VmemcoreError
from ..geometry import Support
from ..units import GiB, format_size

PROBE_MEMORY = 2 * GiB - 16 * (1 << 20)  # not a whole number of large sections: see boot_memory


def boot_memory(sparse_geometry) -> int:
    """Bytes of boot memory for a probe or a check: about 2 GiB, at least four sections, always
    sixteen MiB short of a whole number of sections (a node whose memory is exactly N sections of
    arm64 64K asks its sparse buffer for all of it)."""
    sections = max(-(-PROBE_MEMORY // sparse_geometry.section_size), 4)
    return sections * sparse_geometry.section_size - 16 * (1 << 20)


@attrs.frozen
class Capabilities:
    """One arch × variant × profile: whether it boots and what it offers."""

    boots: Support
    hugepage_sizes: tuple = ()  # HugePageSize
    hvo: Support = Support(False, "the machine does not boot")
    dax_dedup: Support = Support(False, "the machine does not boot")
    memory_hotplug: Support = Support(False, "the machine does not boot")
    zone_device: Support = Support(False, "the machine does not boot")
    memmap_on_memory: Support = Support(False, "the machine does not boot")
    vmemmap: str = ""  # how boot memory's vmemmap is mapped: the mapping, its leaf sizes, plugin bookkeeping

    def report(self) -> dict:
        def answer(support):
            return {"supported": support.supported, "reason": support.reason}

        return {
            "boots": answer(self.boots),
            "hugepage_sizes": [{"size": format_size(h.size), "level": h.level, "contiguous": h.contiguous}
                               for h in self.hugepage_sizes],
            "hvo": answer(self.hvo),
            "dax_dedup": answer(self.dax_dedup),
            "memory_hotplug": answer(self.memory_hotplug),
            "zone_device": answer(self.zone_device),
            "memmap_on_memory": answer(self.memmap_on_memory),
            "vmemmap": self.vmemmap,
        }


def probe(machine_factory) -> Capabilities:
    """Boot a small machine with ``machine_factory()`` (memmap_on_memory on, so that its own rules
    answer) and ask its hooks."""
    try:
        m = machine_factory()
    except PluginError:  # a broken plugin fails the checks, it is not an arch that cannot boot
        raise
    except VmemcoreError as error:
        return Capabilities(Support(False, str(error)))
    hooks = m.hooks
    return Capabilities(
        boots=Support(True),
        hugepage_sizes=tuple(h.size for h in m.hugetlb.hstates.values()),
        hvo=m.hugetlb.support,
        dax_dedup=hooks.dax_vmemmap_support(m),
        memory_hotplug=m.hotplug.support,
        zone_device=hooks.zone_device_support(m),
        memmap_on_memory=m.hotplug.supports_memmap_on_memory(m.hotplug.block_size),
        vmemmap=describe_vmemmap(m),
    )


def describe_vmemmap(m) -> str:
    """``page table 2M``, ``bolted 16M (vmemmap_list)``: the machine's vmemmap mapping (the Linux page
    table or the plugin's, ``vmemcore_vmemmap_mapping``), the leaf sizes boot used, and the state a
    plugin keeps beside it."""
    sizes = ",".join(format_size(span) for span in sorted(m.vmemmap.leaf_spans(), reverse=True))
    kept = ", ".join(sorted(m.plugin_states))
    return f"{m.vmemmap.label} {sizes}".strip() + (f" ({kept})" if kept else "")
