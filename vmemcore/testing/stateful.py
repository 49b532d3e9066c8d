"""Random operation sequences on one target (a hypothesis ``RuleBasedStateMachine``).

Every operation the target offers is interleaved: HugeTLB resizes per size, the HVO switch,
hot-add (with and without memmap_on_memory), online, offline and remove of memory blocks,
device-dax add and remove, sub-section memmap add and remove. ``machine.check()`` runs after each
step; a refusal must be a typed error with a message and leave the machine unchanged. At the end
everything is undone and the machine compared with a freshly booted one. Each step is noted as a
scenario step (``[[steps]]`` TOML), so a shrunk failing sequence prints as a scenario to replay.
"""

import pytest
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ..errors import VmemcoreError
from ..physmem import Zone
from ..units import format_size
from ..zone_device import DevicePagemap
from . import remove_blocks

SLOTS = 3  # memory blocks (and device ranges) the sequences play with


def _state(m):
    """What must match a freshly booted machine once everything is undone: counters, frames by
    owner, sections, nodes, blocks and pagemaps. HVO splits vmemmap PMD leaves for good (the kernel
    never merges them back), so frames that went to page tables count with the free ones."""
    counters = m.counters()
    state = {"present_pages": counters["present_pages"]}
    # HVO frees boot memmap pages and restores with buddy pages: only the sum must come back
    state["nr_memmap_pages+boot"] = counters.get("nr_memmap_pages", 0) + counters.get("nr_memmap_boot_pages", 0)
    tails = len(m.hugetlb.hvo.tail_pages)  # 7.1 keeps its shared tail pages once made
    state["memmap_frames"] = counters["memmap_frames"] - tails
    state["free+pagetable"] = counters["free_frames"] + counters["pagetable_frames"] + tails
    state["sections"] = m.sparse.sections.items()
    state["nodes"] = m.physmem.node_ids
    state["blocks"] = dict(m.hotplug.blocks)
    state["pagemaps"] = dict(m.zone_device.pagemaps)
    return state


def machine_for(target, registry):
    """A state machine class over ``target`` (a :class:`vmemcore.testing.Target`)."""

    class Sequences(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.m = target.machine(registry, hotplug={"memmap_on_memory": "Y"})
            self.fresh = _state(self.m)
            m = self.m
            self.block = m.hotplug.block_size
            unit = max(self.block, m.sparse_geometry.section_size)
            self.base = (-(-max(r.start + r.size for r in m.memory) // unit) + 1) * unit
            self.device_base = self.base + (SLOTS + 1) * unit
            self.sub_base = self.device_base + (SLOTS + 1) * unit
            limit = min(m.hooks.mappable_range(m).end, m.sparse_geometry.vmemmap_max_pfn << m.geometry.page_shift)
            if self.sub_base + unit > limit:
                pytest.skip("no room above boot memory for the sequences")
            self.sizes = sorted(h.size.size for h in m.hugetlb.hstates.values() if not m.hugetlb.is_gigantic(h.size.size))
            self.subs = set()

        def _do(self, step, op):
            """Run ``op``; a refusal must be typed, say why and change nothing."""
            note(step)
            before = self.m.snapshot()
            try:
                op()
            except VmemcoreError as error:
                assert str(error), f"{step}: a refusal without a message"
                assert self.m.snapshot() == before, f"{step}: refused ({error}) but left changes behind"

        @invariant()
        def consistent(self):
            self.m.check()

        @precondition(lambda self: self.sizes)
        @rule(index=st.integers(0, 3), count=st.integers(0, 3))
        def hugetlb_resize(self, index, count):
            size = self.sizes[index % len(self.sizes)]
            self._do(f'[[steps]]\nop = "hugetlb.resize"\nsize = "{format_size(size)}"\ncount = {count}',
                     lambda: self.m.hugetlb.resize(size, count))

        @precondition(lambda self: self.m.hugetlb.support.supported and self.m.profile.at_least(5, 19))
        @rule(enabled=st.booleans())
        def hvo_switch(self, enabled):
            self._do(f'[[steps]]\nop = "hugetlb.optimize_vmemmap"\nenabled = {str(enabled).lower()}',
                     lambda: self.m.hugetlb.set_optimize_vmemmap(enabled))

        @precondition(lambda self: self.m.hotplug.support.supported)
        @rule(slot=st.integers(0, SLOTS - 1), on_memory=st.booleans())
        def hot_add(self, slot, on_memory):
            start = self.base + slot * self.block
            self._do(f'[[steps]]\nop = "hotplug.add"\nstart = "{format_size(start)}"\nsize = "{format_size(self.block)}"\n'
                     f"memmap_on_memory = {str(on_memory).lower()}",
                     lambda: self.m.hotplug.add_memory(start, self.block, memmap_on_memory=on_memory))

        @precondition(lambda self: self.m.hotplug.blocks)
        @rule(data=st.data(), movable=st.booleans())
        def online(self, data, movable):
            block = data.draw(st.sampled_from(sorted(self.m.hotplug.blocks)))
            zone = Zone.MOVABLE if movable else Zone.NORMAL
            self._do(f'[[steps]]\nop = "hotplug.online"\nblock = {block}\nzone = "{zone}"',
                     lambda: self.m.hotplug.online(block, zone))

        @precondition(lambda self: self.m.hotplug.blocks)
        @rule(data=st.data())
        def offline_and_remove(self, data):
            block = data.draw(st.sampled_from(sorted(self.m.hotplug.blocks)))
            b = self.m.hotplug.blocks[block]
            start, size = b.start_pfn << self.m.geometry.page_shift, b.nr_pages << self.m.geometry.page_shift
            self._do(f'[[steps]]\nop = "hotplug.offline"\nblock = {block}', lambda: self._offline(block))
            self._do(f'[[steps]]\nop = "hotplug.remove"\nstart = "{format_size(start)}"\nsize = "{format_size(size)}"',
                     lambda: self.m.hotplug.remove_memory(start, size))

        def _offline(self, block):
            if self.m.hotplug.blocks[block].state != "offline":
                self.m.hotplug.offline(block)

        @precondition(lambda self: self.m.hooks.zone_device_support(self.m).supported)
        @rule(slot=st.integers(0, SLOTS - 1), shift=st.sampled_from([0, 9]), remove=st.booleans())
        def device_dax(self, slot, shift, remove):
            start = self.device_base + slot * self.block
            if remove:
                self._do(f'[[steps]]\nop = "devdax.remove"\nstart = "{format_size(start)}"',
                         lambda: self.m.zone_device.remove(start))
            else:
                pgmap = DevicePagemap(ranges=[(start, self.block)], vmemmap_shift=shift)
                self._do(f'[[steps]]\nop = "devdax.add"\nstart = "{format_size(start)}"\nsize = "{format_size(self.block)}"\n'
                         f'align = "{format_size(self.m.geometry.page_size << shift)}"',
                         lambda: self.m.zone_device.add(pgmap))

        @rule(index=st.integers(0, 7), remove=st.booleans())
        def subsection(self, index, remove):
            sub = self.m.sparse_geometry.pages_per_subsection
            pfn = (self.sub_base >> self.m.geometry.page_shift) + index * sub
            step = f'[[steps]]\nop = "memmap.{"remove" if remove else "add"}"\nstart = "{format_size(pfn << self.m.geometry.page_shift)}"\nsize = "2M"'
            if remove:
                self._do(step, lambda: (self.m.remove_memmap(pfn, sub), self.subs.discard(pfn)))
            else:
                self._do(step, lambda: (self.m.add_memmap(pfn, sub), self.subs.add(pfn)))

        def teardown(self):
            m = self.m
            for size in self.sizes:
                m.hugetlb.resize(size, 0)
            for key in list(m.zone_device.pagemaps):
                m.zone_device.remove(key << m.geometry.page_shift)
            for pfn in sorted(self.subs):
                m.remove_memmap(pfn, m.sparse_geometry.pages_per_subsection)
            remove_blocks(m, sorted(m.hotplug.blocks, reverse=True))  # newest memmap first
            m.check()
            after = _state(m)
            assert after == self.fresh, "undoing every operation did not give back the booted machine: " + \
                ", ".join(k for k in after if after[k] != self.fresh[k])

    Sequences.__name__ = f"Sequences[{target.id}]"
    return Sequences


def run(target, registry, examples, steps=20):
    """Run ``examples`` random sequences of up to ``steps`` operations on ``target``."""
    Sequences = machine_for(target, registry)
    Sequences.TestCase.settings = settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                                           derandomize=True, database=None)
    Sequences.TestCase().runTest()
