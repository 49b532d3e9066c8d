"""The step table: every ``[[steps]]`` op, the keys it takes and what it does to the machine."""

import attrs
from attrs import frozen

from ..config import REQUIRED
from ..errors import BadRequest
from ..physmem import Zone
from ..units import byte_range, format_size


@frozen
class Op:
    """A step operation: ``keys`` maps each key to (kind, default), kind one of "size", "hugepage"
    (a HugeTLB page size), "node", "count", "block" (a memory block id), "zone" or "bool", default
    REQUIRED when the key must be given, None when it is optional (ops with a ``block`` key take it
    or ``start`` and ``size``); ``start`` and ``size`` must be whole sub-sections, or whole sections
    with ``sections``. ``run(machine, args)`` performs it and returns what it reports (a dict) or None."""

    name: str
    keys: dict
    run: object
    help: str
    sections: bool = False


def _pages(machine, args):
    """``(pfn, nr_pages)`` of a step's ``start`` and ``size``."""
    shift = machine.geometry.page_shift
    return args["start"] >> shift, args["size"] >> shift


def _switch(machine, args):
    machine.hugetlb.set_optimize_vmemmap(args["enabled"])
    return {"optimize_vmemmap": machine.hugetlb.optimize_vmemmap}


def _block_ids(machine, args):
    """The memory blocks a step names: its ``block``, or every block of its ``start`` + ``size``."""
    if "block" in args:
        return [args["block"]]
    first, count = _pages(machine, args)
    per_block = machine.hotplug.block_pages
    if first % per_block or count % per_block:
        raise BadRequest(f"{byte_range(args['start'], args['start'] + args['size'])} are not aligned to the "
                         f"{format_size(machine.hotplug.block_size)} memory block size (-EINVAL)")
    return range(first // per_block, (first + count) // per_block)  # a range: a step may name petabytes of them


def _each_block(machine, args, action):
    ids = _block_ids(machine, args)
    for block in ids:
        action(block)
    return {"blocks": list(ids)}


def _offline(machine, args):
    """Offline the blocks; the result says how many free HugeTLB pages offlining dissolved, which
    is why ``nr_hugepages_<size>`` falls."""
    dissolved = {}
    ids = _block_ids(machine, args)
    for block in ids:
        for size, count in machine.hotplug.offline(block).items():
            dissolved[size] = dissolved.get(size, 0) + count
    return {"blocks": list(ids)} | {f"dissolved_hugepages_{size}": count for size, count in dissolved.items()}


def _hot_add(machine, args):
    result = machine.hotplug.add_memory(args["start"], args["size"], args["node"], args["memmap_on_memory"])
    return attrs.asdict(result) | {"blocks": list(result.blocks)}


def _hot_remove(machine, args):
    ids = _block_ids(machine, args)
    machine.hotplug.remove_memory(args["start"], args["size"])
    return {"blocks": list(ids)}


def _fragment(machine, args):
    """``memory.fragment``: pin pages in a pattern on a node; reports the pages pinned and the largest
    free buddy block left."""
    page = machine.geometry.page_size
    every = args.get("every") or page << machine.sparse_geometry.max_page_order
    pin = args.get("pin") or page
    if every % page or pin % page or not 0 < pin < every or every & (every - 1):
        raise BadRequest(f"memory.fragment: every ({format_size(every)}) must be a power of two of whole "
                         f"{format_size(page)} pages, larger than pin ({format_size(pin)}), itself whole pages")
    with machine.transaction():
        pinned = machine.physmem.pin_pattern(args.get("node", 0), every // page, pin // page)
    return {"pinned_pages": pinned, "every": every, "pin": pin}


def _devdax(machine, args, step):
    """``devdax.add`` / ``devdax.remove``: the step of :mod:`vmemcore.zone_device` (loaded here, not
    with the table of steps, which the command line's help reads)."""
    from .. import zone_device

    return getattr(zone_device, step)(machine, **args)


_RANGE = {"start": ("size", REQUIRED), "size": ("size", REQUIRED)}
_NODE = {"node": ("node", 0)}
_BLOCKS = {"block": ("block", None), "start": ("size", None), "size": ("size", None)}
OPS = {
    op.name: op
    for op in (
        Op("memmap.populate", {**_RANGE, **_NODE},
           lambda m, a: m.populate_section_memmap(*_pages(m, a), a["node"]),
           "map the memmap of the range (__populate_section_memmap)"),
        Op("memmap.depopulate", dict(_RANGE),
           lambda m, a: m.depopulate_section_memmap(*_pages(m, a)),
           "unmap and free the memmap of the range (depopulate_section_memmap)"),
        Op("memmap.add", {**_RANGE, **_NODE},
           lambda m, a: m.add_memmap(*_pages(m, a), a["node"]),
           "sparse_add_section for each section piece of the range"),
        Op("memmap.remove", dict(_RANGE),
           lambda m, a: m.remove_memmap(*_pages(m, a)),
           "sparse_remove_section for each section piece of the range"),
        Op("hugetlb.resize", {"size": ("hugepage", REQUIRED), "count": ("count", REQUIRED)},
           lambda m, a: attrs.asdict(m.hugetlb.resize(a["size"], a["count"])),
           "write count to nr_hugepages of the HugeTLB size (set_max_huge_pages)"),
        Op("hugetlb.optimize_vmemmap", {"enabled": ("bool", REQUIRED)}, _switch,
           "the sysctl vm.hugetlb_optimize_vmemmap (5.19+): HVO for folios allocated afterwards"),
        Op("hotplug.add", {**_RANGE, **_NODE, "memmap_on_memory": ("bool", False)}, _hot_add,
           "add_memory: offline memory blocks with their memmap, from the range itself with memmap_on_memory",
           sections=True),
        Op("hotplug.online", {**_BLOCKS, "zone": ("zone", Zone.NORMAL)},
           lambda m, a: _each_block(m, a, lambda block: m.hotplug.online(block, a["zone"])),
           "online a memory block, or every block of start+size, into ZONE_NORMAL or ZONE_MOVABLE",
           sections=True),
        Op("hotplug.offline", dict(_BLOCKS), _offline,
           "offline a memory block, or every block of start+size (-EBUSY if pages in it are in use)",
           sections=True),
        Op("hotplug.remove", dict(_RANGE), _hot_remove,
           "remove_memory: offline blocks removed and their memmap freed", sections=True),
        Op("memory.fragment", {**_NODE, "every": ("size", None), "pin": ("size", None)}, _fragment,
           "pin pin bytes (default a page) of unmovable memory at the start of every every-aligned stretch "
           "(default the largest buddy block) of the node's free ZONE_NORMAL memory: no free block of every "
           "bytes is left, as a long-running workload's pinned pages leave it"),
        Op("devdax.add", {**_RANGE, **_NODE, "align": ("size", None), "altmap": ("bool", False)},
           lambda m, a: _devdax(m, a, "add_devdax_step"),
           "memremap_pages of device-dax memory with compound pages of align bytes; vmemmap dedup where the kernel does it"),
        Op("devdax.remove", dict(_RANGE), lambda m, a: _devdax(m, a, "remove_devdax_step"),
           "memunmap_pages of the device pagemap that starts at start (size must match)"),
    )
}
