"""The result of a run: one JSON-able dict (``report``) and its terminal table (``format_report``);
the memory blocks (``hotplug_report``, ``format_blocks``); and the ``/proc/kpageflags`` view of a
range of pfns (``kpageflags_runs``, ``format_kpageflags``)."""

import attrs
import numpy as np

from . import structpage
from .hotplug import BlockState
from .hugetlb_pool import BOOT, OPTIMIZED
from .hvo import optimizable_pages
from .pagetable import LEAF, PRESENT
from .physmem import MOVABLE, NORMAL, Use
from .stats import NR_MEMMAP_BOOT_PAGES, NR_MEMMAP_PAGES
from .structpage import KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_HUGE
from .units import format_size, human_size


def counter_unit(name) -> str:
    """What a counter counts: "pages" (of the machine's page size), "bytes", or a plain "count"
    (HugeTLB pages are counted, not sized in base pages)."""
    if "bytes" in name:
        return "bytes"
    if "hugepages" in name:
        return "count"
    if "pages" in name or name.endswith("_frames"):
        return "pages"
    return "count"


def report(machine, steps=()) -> dict:
    """Everything about a machine after a run, as plain data (``json.dumps`` takes it as is).

    ``steps`` are the :class:`vmemcore.scenario.StepResult` values of the run.
    """
    counters = {name: int(value) for name, value in machine.counters().items()}
    offline = _offline_pages(machine)
    return {
        "machine": {
            "arch": machine.arch.name,
            "plugin": machine.plugin.name,
            "variant": machine.variant.name,
            "variant_options": dict(machine.variant.options),
            "kernel": machine.profile.name,
            "features": dict(machine.features),
            "page_size": machine.geometry.page_size,
            "section_size": machine.sparse_geometry.section_size,
            "max_physmem_bits": machine.sparse_geometry.max_physmem_bits,
            "memory": [{"node": r.node, "start": r.start, "size": r.size} for r in machine.memory],
        },
        "nodes": [
            {"node": node, "present_pages": machine.physmem.present_pages(node), "free_pages": machine.physmem.free_pages(node),
             "offline_pages": offline.get(node, 0)}
            for node in machine.physmem.node_ids
        ],
        "derived": derived(machine),
        "hugetlb": hugetlb_report(machine.hugetlb),
        "hotplug": hotplug_report(machine),
        "counters": counters,
        "counter_units": {name: counter_unit(name) for name in counters},
        "steps": [attrs.asdict(step) for step in steps],
        "live_entries": live_entries_report(machine),
    }


def live_entries_report(machine, shown=20):
    """The live-entry check (None when off): the arch's rule, the violations counted, per
    operation and kernel function, and the first ``shown`` in full."""
    checker = machine.live_entries
    if checker is None:
        return None
    return {
        "rule": checker.rule.reason,
        "violations": checker.count,
        "by_operation": dict(checker.by_operation),
        "first": [str(v) for v in checker.violations[:shown]],
    }


def _offline_pages(machine) -> dict:
    """{node: pages of its offline memory blocks}: present, but neither used nor free."""
    out = {}
    for block in machine.hotplug.blocks.values():
        if block.state is BlockState.OFFLINE:
            out[block.node] = out.get(block.node, 0) + block.nr_pages
    return out


def derived(machine) -> dict:
    """The figures people compute from the counters, in bytes, shares in percent of the memory
    present ("RAM"):

    - ``memory``: present, online, offline (hot-added blocks not online), free, and used = online
      - free, so offline memory is never "used";
    - ``memmap``: boot (``nr_memmap_boot_pages``), runtime (``nr_memmap_pages``) and, within
      runtime, the self-hosted memmap of hot-added blocks (memmap_on_memory), each with its share;
    - ``pagetables``: the frames holding vmemmap page tables;
    - ``hvo``: vmemmap pages optimized folios do without (``hugetlb_vmemmap_optimizable_size``
      each) net of what HVO added: a PTE table per split PMD (``vmemmap_split_pmd``) and 7.1's
      shared tail pages (docs/kernel-map.md#hugetlb-sizes-and-hvo);
    - ``nodes``: per node, its memmap and the page tables mapping it, on the node itself or off it
      (or on a device, for an altmap on device memory).
    """
    page = machine.geometry.page_size
    counters = machine.stats
    present = machine.physmem.present_pages() * page
    offline = sum(_offline_pages(machine).values()) * page
    free = machine.physmem.free_pages() * page

    def share(nbytes):
        return {"bytes": nbytes, "percent_of_ram": 100 * nbytes / present if present else 0.0}

    boot, runtime = counters[NR_MEMMAP_BOOT_PAGES] * page, counters[NR_MEMMAP_PAGES] * page
    return {
        "memory": {"present": present, "online": present - offline, "offline": offline, "free": free,
                   "used": present - offline - free},
        "memmap": {"total": share(boot + runtime), "boot": share(boot), "runtime": share(runtime),
                   "self_hosted": share(_self_hosted_memmap(machine) * page)},
        "pagetables": {"pages": machine.physmem.pages_owned(Use.PAGETABLE)} | share(machine.physmem.pages_owned(Use.PAGETABLE) * page),
        "hvo": _hvo_saving(machine),
        "nodes": _placement(machine),
    }


def _self_hosted_memmap(machine) -> int:
    """Memmap frames inside the hot-added blocks they describe (memmap_on_memory)."""
    hotplug, frames = machine.hotplug, machine.physmem.frames
    return sum(e - s for b in hotplug.blocks.values()
               for s, e, owner in frames.items(b.start_pfn, b.start_pfn + hotplug.self_hosted_pages(b))
               if owner.use is Use.MEMMAP)


def _hvo_saving(machine) -> dict:
    """What HVO saves now: ``optimizable_pages`` per optimized folio, less the PTE tables it added
    and 7.1's shared tail pages. The PTE tables are one per split PMD (never merged back) or, in
    5.14-5.17 with HVO on, every PTE table of the vmemmap: it is mapped with base pages for HVO's
    sake (``hvo_needs_basepage_vmemmap``), which assumes the arch maps it with PMD leaves otherwise."""
    page = machine.geometry.page_size
    hugetlb = machine.hugetlb
    optimized = {h.name: h.folios.count(OPTIMIZED) for _, h in sorted(hugetlb.hstates.items())}
    saved = sum(optimizable_pages(machine, h.order) * optimized[h.name] for h in hugetlb.hstates.values())
    splits = machine.stats["hvo_pmd_splits"]
    pte = machine.geometry.levels[-1]
    tables = splits
    if machine.profile.hvo_needs_basepage_vmemmap and hugetlb.optimize_vmemmap:
        tables = machine.pagetable.tables[pte.name]
    pte_bytes = tables * pte.alloc_bytes
    tails = len(hugetlb.hvo.tail_pages)
    return {"optimized_folios": {name: n for name, n in optimized.items() if n},
            "vmemmap_bytes_freed": saved * page, "split_pmds": splits, "pte_tables_added": tables,
            "pte_table_bytes_added": pte_bytes, "shared_tail_bytes": tails * page,
            "net_saved_bytes": saved * page - pte_bytes - tails * page}


def _placement(machine) -> list:
    """Per node of the memory described: memmap and page-table bytes on that node, off it, and
    (memmap only) on device memory. A frame several PTEs map (HVO, device-dax dedup) counts once."""
    page_shift = machine.geometry.page_shift
    sparse = machine.sparse_geometry
    pte = machine.geometry.levels[-1]

    def finder(extents):
        """keys (an array) -> the node of the extent holding each, -1 for none."""
        starts = np.array([s for s, _, _ in extents], dtype=np.int64)
        ends = np.array([e for _, e, _ in extents], dtype=np.int64)
        values = np.array([v if isinstance(v, int) else v.node for _, _, v in extents], dtype=np.int64)

        def find(keys):
            if not len(starts):
                return np.full(len(keys), -1)
            i = np.maximum(np.searchsorted(starts, keys, side="right") - 1, 0)
            return np.where((keys >= starts[i]) & (keys < ends[i]), values[i], -1)
        return find

    section_node, frame_node = finder(machine.sparse.sections.items()), finder(machine.physmem.nodes.items())

    def described(offsets):  # the node of the section whose struct pages sit at these vmemmap offsets
        return section_node(offsets // sparse.struct_page_size >> sparse.pfn_section_shift)

    def one_sum(table, leaves, span):
        """``(owner, home, bytes)`` of all the leaves of ``table`` when one node is on each side."""
        lo, hi = int(table.pfns[leaves].min()), int(table.pfns[leaves].max()) + span
        first = table.va(int(leaves[0])) - sparse.vmemmap_base
        last = table.va(int(leaves[-1])) + table.level.entry_span - 1 - sparse.vmemmap_base
        owner = _one_node(machine.sparse.sections, first // sparse.struct_page_size >> sparse.pfn_section_shift,
                          (last // sparse.struct_page_size >> sparse.pfn_section_shift) + 1)
        home = _one_node(machine.physmem.nodes, lo, hi)
        return (owner, home, len(leaves) * span << page_shift) if owner is not None and home is not None else None

    frames, counts, offsets, tables, whole, ptes = [], [], [], [], [], []

    def leaf_by_leaf(table, leaves, span):
        frames.append(table.pfns[leaves])
        counts.append(np.full(len(leaves), span))
        offsets.append((table.base - sparse.vmemmap_base) + (leaves.astype(np.int64) << table.level.shift))

    for table in machine.pagetable.all_tables():
        present_entries = np.flatnonzero(table.flags & PRESENT)
        if table.pfn is not None and len(present_entries):
            tables.append((table.pfn, table.va(int(present_entries[0])) - sparse.vmemmap_base,
                           machine.table_frames.table_bytes(table.pfn)))
        leaves = np.flatnonzero((table.flags & (PRESENT | LEAF)) == (PRESENT | LEAF))
        if not len(leaves):
            continue
        span = table.level.entry_span >> page_shift
        if table.level is pte:  # after the walk, when whether a frame is mapped twice is known
            ptes.append((table, leaves))
            continue
        summed = one_sum(table, leaves, span)  # a leaf of its own frames: the table is one sum if it can be
        if summed:
            whole.append(summed)
        else:
            leaf_by_leaf(table, leaves, span)
    # a frame several PTEs map (HVO, device-dax dedup) counts once: at its first PTE in its table,
    # and when tables share frames, at its first PTE of all (the repeats dropped below); each PTE
    # table is one sum, as above, where no frame of it is in another table
    ptes = [(table, _first_mappings(table.pfns[leaves], leaves)) for table, leaves in ptes]
    repeated = bool(ptes) and _repeats(np.concatenate([table.pfns[leaves] for table, leaves in ptes]))
    for table, leaves in ptes:
        summed = None if repeated else one_sum(table, leaves, 1)
        if summed:
            whole.append(summed)
        else:
            leaf_by_leaf(table, leaves, 1)
    out = {}

    def add(owners, homes, nbytes, key, places):
        """Sum ``nbytes`` per owner node and place: on the owner's node, off it, on no node (device)."""
        place = np.where(homes < 0, 2, np.where(homes == owners, 0, 1))
        for owner in (np.flatnonzero(np.bincount(owners + 1)) - 1).tolist():  # np.unique, without sorting: nodes or -1
            entry = out.setdefault(owner, {"memmap": {"on_node": 0, "off_node": 0, "on_device": 0},
                                           "pagetables": {"on_node": 0, "off_node": 0}})
            mine = owners == owner
            for index, name in enumerate(places):
                entry[key][name] += int(nbytes[mine & (place == index)].sum())

    if frames:
        frames, counts, offsets = np.concatenate(frames), np.concatenate(counts), np.concatenate(offsets)
        shared = counts == pte.entry_span >> page_shift  # only PTEs map a frame more than once
        first = np.unique(frames[shared], return_index=True)[1] if repeated else np.arange(int(shared.sum()))
        keep = np.concatenate([np.flatnonzero(~shared), np.flatnonzero(shared)[first]])
        frames, counts = frames[keep], counts[keep]
        columns = [described(offsets[keep]), frame_node(frames), counts << page_shift]
    else:
        columns = [np.empty(0, dtype=np.int64)] * 3
    if whole:  # the leaves summed a table at a time, then the others one by one (as arrays)
        columns = [np.concatenate([np.array(column, dtype=np.int64), rest]) for column, rest in zip(zip(*whole), columns)]
    if len(columns[0]):
        add(*columns, "memmap", ("on_node", "off_node", "on_device"))
    if tables:
        pfns = np.array([pfn for pfn, _, _ in tables], dtype=np.int64)
        homes = frame_node(pfns)
        owners = described(np.array([offset for _, offset, _ in tables], dtype=np.int64))
        add(owners, homes, np.array([nbytes for _, _, nbytes in tables], dtype=np.int64), "pagetables", ("on_node", "off_node"))
    return [{"node": node} | out[node] for node in sorted(out)]


def _first_mappings(frames, leaves):
    """The entries of ``leaves`` (mapping ``frames``) that map a frame first, in order."""
    ordered = np.sort(frames)
    if (ordered[1:] != ordered[:-1]).all():
        return leaves
    _, first = np.unique(frames, return_index=True)
    return leaves[np.sort(first)]


def _repeats(frames) -> bool:
    """Does a frame occur twice in the array ``frames``? Cut into runs of frames going up or down
    by one (no repeat inside a run), a repeat needs two runs whose frame ranges overlap: a check
    that costs the runs, not a sort of every frame, when the memmap is mapped run by run."""
    if len(frames) < 2:
        return False
    step = np.diff(frames)
    broken = np.abs(step) != 1  # broken[i]: frame i + 1 starts a run
    broken[1:] |= step[1:] != step[:-1]
    starts = np.concatenate([[0], np.flatnonzero(broken) + 1])
    ends = np.append(starts[1:], len(frames)) - 1
    lo, hi = np.minimum(frames[starts], frames[ends]), np.maximum(frames[starts], frames[ends])
    order = np.argsort(lo, kind="stable")
    return bool((lo[order][1:] <= np.maximum.accumulate(hi[order])[:-1]).any())


def _one_node(extents, start, end):
    """The node of ``[start, end)`` in ``extents`` (a RangeMap of nodes or of section states) when
    it is one node throughout: -1 when none of it is there, None when mixed or partly there."""
    items = extents.items(start, end)
    if not items:
        return -1
    nodes = {v if isinstance(v, int) else v.node for _, _, v in items}
    covered = sum(e - s for s, e, _ in items)
    return nodes.pop() if len(nodes) == 1 and covered == end - start else None


def hugetlb_report(hugetlb) -> dict:
    """The HVO switch, the arch's HVO support and each hstate's pool (sizes in ascending order)."""
    return {
        "optimize_vmemmap": hugetlb.optimize_vmemmap,
        "support": attrs.asdict(hugetlb.support),
        "vmemmap_remap": hugetlb.hvo.remap.value if hugetlb.hvo.remap else None,
        "hstates": {
            h.name: {
                "nr_hugepages": h.nr_huge_pages,
                "surplus": h.surplus_huge_pages,
                "optimized": h.folios.count(OPTIMIZED),
                "boot": h.folios.count(BOOT),
            }
            for _, h in sorted(hugetlb.hstates.items())
        },
    }


def hotplug_report(machine) -> dict:
    """The ``memory_hotplug.memmap_on_memory`` mode, the memory block size, every hot-added memory
    block (by id) and each node's zones (node order, ZONE_NORMAL before ZONE_MOVABLE)."""
    shift = machine.geometry.page_shift
    hotplug = machine.hotplug
    zones = sorted(hotplug.zone_pages().items(), key=lambda item: (item[0][0], (NORMAL, MOVABLE).index(item[0][1])))
    return {
        "memmap_on_memory": hotplug.mode,
        "block_size": hotplug.block_size,
        "blocks": [
            {"id": b.id, "start": b.start_pfn << shift, "size": b.nr_pages << shift, "node": b.node, "state": b.state,
             "zone": b.zone, "self_hosted_pages": hotplug.self_hosted_pages(b)}
            for _, b in sorted(hotplug.blocks.items())
        ],
        "zones": [{"node": node, "zone": zone, "present_pages": present, "managed_pages": managed}
                  for (node, zone), (present, managed) in zones],
    }


def columns(rows, right=(), indent=""):
    """Rows of cells as aligned lines, two spaces apart; columns in ``right`` right-aligned, empty
    columns left out."""
    keep = [i for i in range(len(rows[0])) if any(row[i] for row in rows)]  # rows must not be empty
    wide = {i: max(len(row[i]) for row in rows) for i in keep}
    return [(indent + "  ".join(row[i].rjust(wide[i]) if i in right else row[i].ljust(wide[i]) for i in keep)).rstrip()
            for row in rows]


def _value_cells(name, value, page_size, signed=False):
    """(number, size) cells of one counter: "65,536", "(256M)"."""
    number = f"{value:+,}" if signed else f"{value:,}"
    unit = counter_unit(name)
    if value == 0:
        return number, ""
    if unit == "pages":
        return number, f"({'+' if signed and value > 0 else ''}{human_size(value * page_size)})"
    if unit == "bytes":
        return number, f"({'+' if signed and value > 0 else ''}{human_size(value)})"
    return number, ""


def _args(args):
    """``key=value`` pairs; byte sizes exact in their largest unit, lists of ids as ranges, booleans
    as yes/no, empty values left out."""
    def cell(key, value):
        if isinstance(value, bool):
            return "yes" if value else "no"
        if key in ("start", "size", "align") and isinstance(value, int) and not isinstance(value, bool):
            return format_size(value)
        return id_ranges(value) if isinstance(value, list) else value
    return " ".join(f"{key}={cell(key, value)}" for key, value in args.items() if value not in ({}, ""))


def id_ranges(ids) -> str:
    """Integers as comma-separated runs: ``[512, 513, 514, 600]`` -> ``"512-514,600"``."""
    runs = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def percent(value) -> str:
    """A share in percent, to four decimals at most: "1.5625%", "0.0003%", "<0.0001%"."""
    if value and value < 0.0001:
        return "<0.0001%"
    return f"{value:.4f}".rstrip("0").rstrip(".") + "%"


def _derived_lines(data):
    """The :func:`derived` figures, a line per kind and one per node."""
    mem, memmap, hvo = data["memory"], data["memmap"], data["hvo"]
    lines = [
        "RAM       " + ", ".join(f"{human_size(mem[k])} {k}" for k in ("present", "online", "offline", "used", "free")),
        f"memmap    {human_size(memmap['total']['bytes'])} = {percent(memmap['total']['percent_of_ram'])} of RAM: "
        + ", ".join(f"{k.replace('_', '-')} {human_size(memmap[k]['bytes'])} ({percent(memmap[k]['percent_of_ram'])})"
                    for k in ("boot", "runtime", "self_hosted")),
        f"tables    {data['pagetables']['pages']:,} pages ({human_size(data['pagetables']['bytes'])}) of vmemmap page tables = "
        f"{percent(data['pagetables']['percent_of_ram'])} of RAM",
    ]
    if hvo["pte_tables_added"] or hvo["optimized_folios"]:
        folios = ", ".join(f"{n:,} x {size}" for size, n in hvo["optimized_folios"].items()) or "no folios"
        tails = f", {human_size(hvo['shared_tail_bytes'])} of shared tail pages" if hvo["shared_tail_bytes"] else ""
        lines.append(f"HVO       net saving {human_size(hvo['net_saved_bytes'])}: {human_size(hvo['vmemmap_bytes_freed'])} of "
                     f"vmemmap freed ({folios} optimized), less {human_size(hvo['pte_table_bytes_added'])} of PTE tables "
                     f"({hvo['pte_tables_added']:,}; {hvo['split_pmds']:,} split PMDs){tails}")
    for n in data["nodes"]:
        where = [f"{what} {human_size(n[key]['on_node'])} on node, {human_size(n[key]['off_node'])} off node"
                 for what, key in (("memmap", "memmap"), ("page tables", "pagetables"))]
        device = f", memmap {human_size(n['memmap']['on_device'])} on device memory" if n["memmap"]["on_device"] else ""
        lines.append(f"node {n['node']}    for its memory: {'; '.join(where)}{device}")
    return lines


def _hugetlb_lines(data):
    support = data["support"]
    if data["vmemmap_remap"]:
        state = f"HVO {'on' if data['optimize_vmemmap'] else 'off'}, what-if remap strategy {data['vmemmap_remap']}"
    elif not support["supported"]:
        state = f"HVO unavailable: {support['reason']}"
    else:
        state = f"HVO {'on' if data['optimize_vmemmap'] else 'off'}"
        if support["reason"]:
            state += f" (caveat: {support['reason']})"
    if not data["hstates"]:
        return [f"hugetlb   no HugeTLB sizes; {state}"]
    header = ("size", "nr_hugepages", "surplus", "optimized", "boot")
    rows = [header] + [(name, *(f"{h[key]:,}" for key in header[1:])) for name, h in data["hstates"].items()]
    return [f"hugetlb   {state}"] + columns(rows, right=range(5), indent="          ")


def _zone_lines(zones, page):
    rows = [("node", "zone", "present_pages", "", "managed_pages", "")]
    rows += [(str(z["node"]), z["zone"], f"{z['present_pages']:,}", f"({human_size(z['present_pages'] * page)})",
              f"{z['managed_pages']:,}", f"({human_size(z['managed_pages'] * page)})") for z in zones]
    table = columns(rows, right=(0, 2, 4), indent="          ")
    return ["zones" + table[0][len("zones"):]] + table[1:]  # the title in the header row's indent


UNCOLLAPSED_BLOCKS = 16  # at most this many blocks get one row each


def format_blocks(data, page) -> str:
    """The memory blocks of a :func:`hotplug_report` dict, one row per block as
    ``/sys/devices/system/memory`` lists them; with more than UNCOLLAPSED_BLOCKS blocks, consecutive
    blocks with the same node, state, zone and self-hosted pages share a row (``512-583 (72 blocks)``)."""
    blocks = data["blocks"]
    head = f"memory blocks  {human_size(data['block_size'])} each, memory_hotplug.memmap_on_memory={data['memmap_on_memory']}"
    if not blocks:
        return f"{head}\n  no hot-added memory blocks"
    same = ("node", "state", "zone", "self_hosted_pages")
    groups = []
    for b in blocks:
        last = groups[-1][-1] if groups else None
        if len(blocks) > UNCOLLAPSED_BLOCKS and last and last["id"] + 1 == b["id"] and all(last[k] == b[k] for k in same):
            groups[-1].append(b)
        else:
            groups.append([b])
    rows = [("block", "", "start", "size", "node", "state", "zone", "self-hosted pages")]
    for group in groups:
        b, n = group[0], len(group)
        hosted = f"{b['self_hosted_pages']:,}" + (" each" if n > 1 and b["self_hosted_pages"] else "")
        rows.append((f"{b['id']}-{group[-1]['id']}" if n > 1 else str(b["id"]), f"({n} blocks)" if n > 1 else "",
                     f"{b['start']:#x}", human_size(n * b["size"]), str(b["node"]), b["state"], b["zone"] or "-", hosted))
    online = sum(b["state"] == "online" for b in blocks)
    hosted = sum(b["self_hosted_pages"] for b in blocks)
    total = (f"  {len(blocks):,} block{'s' if len(blocks) > 1 else ''} ({human_size(sum(b['size'] for b in blocks))}): "
             f"{online:,} online, {len(blocks) - online:,} offline; {hosted:,} self-hosted pages"
             + (f" ({human_size(hosted * page)})" if hosted else ""))
    return "\n".join([head] + columns(rows, right=(3, 4, 7), indent="  ") + [total])


def format_report(data) -> str:
    """A readable text rendering of a :func:`report` dict."""
    m = data["machine"]
    page = m["page_size"]
    options = ", ".join(f"{k}={v}" for k, v in m["variant_options"].items())
    features = ", ".join(f"{k}={'on' if v else 'off'}" for k, v in m["features"].items()) or "none"
    lines = [
        f"machine   {m['arch']} {m['variant']} ({options}), kernel {m['kernel']}, plugin {m['plugin']}",
        f"geometry  {human_size(page)} pages, {human_size(m['section_size'])} sections, "
        f"{m['max_physmem_bits']}-bit physical addresses",
        f"features  {features}",
    ]
    for r in m["memory"]:
        end = r["start"] + r["size"]
        lines.append(f"memory    node {r['node']}  [{r['start']:#x}, {end:#x})  {human_size(r['size'])}")
    for n in data["nodes"]:
        used = n["present_pages"] - n["offline_pages"] - n["free_pages"]
        offline = f", {n['offline_pages']:,} offline" if n["offline_pages"] else ""
        lines.append(f"node {n['node']}    {n['present_pages']:,} pages present, {used:,} used ({human_size(used * page)}), "
                     f"{n['free_pages']:,} free{offline}")
    lines += _derived_lines(data["derived"])
    lines += _hugetlb_lines(data["hugetlb"])
    lines += _zone_lines(data["hotplug"]["zones"], page)
    lines += ["", "counters"]
    lines += columns([(name, *_value_cells(name, value, page)) for name, value in data["counters"].items()], (1,), "  ")
    if data["hotplug"]["blocks"]:
        lines += ["", format_blocks(data["hotplug"], page)]
    if data["steps"]:
        lines += ["", "steps"]
        for step in data["steps"]:
            where = f"  (line {step['line']})" if step["line"] else ""
            lines.append(f"  [{step['index']}] {step['op']} {_args(step['args'])}{where}")
            if step["result"]:
                lines.append(f"        result: {_args(step['result'])}")
            changes = [(name, *_value_cells(name, delta, page, signed=True)) for name, delta in step["changes"].items()]
            lines += columns(changes, (1,), "        ") if changes else ["        no counter changed"]
    if data["live_entries"] is not None:
        lines += ["", *_live_entry_lines(data["live_entries"])]
    return "\n".join(lines)


def _live_entry_lines(live):
    lines = [f"live entries  {live['violations']:,} violation(s) of the rule: {live['rule']}"]
    lines += [f"  {count:,}  {where}" for where, count in live["by_operation"].items()]
    if live["first"]:
        lines += ["  first:"] + [f"    {v}" for v in live["first"]]
    return lines


# -- /proc/kpageflags ---------------------------------------------------------------------------

KPF_NAMES = {value: name[4:].lower() for name, value in vars(structpage).items() if name.startswith("KPF_")}
HEAD_PAGE_FLAGS = 1 << KPF_COMPOUND_HEAD | 1 << KPF_HUGE  # tools/testing/selftests/mm/hugepage-vmemmap.c
TAIL_PAGE_FLAGS = 1 << KPF_COMPOUND_TAIL | 1 << KPF_HUGE


def kpageflag_names(flags) -> list:
    """The names of the bits set in ``flags``, as page-types spells them ("compound_head", "huge")."""
    return [KPF_NAMES.get(bit, f"bit{bit}") for bit in range(flags.bit_length()) if flags >> bit & 1]


KPAGEFLAGS_CHUNK = 1 << 16  # pfns read at a time: memory stays bounded however many are asked for


def iter_kpageflags(machine, pfn, count):
    """``(pfn, flags)`` for ``[pfn, pfn + count)``, read a chunk at a time as ``kpageflags_read``
    loops; it stops where ``/proc/kpageflags`` ends (``StructPages.max_dump_pfn``)."""
    end = pfn + count
    while pfn < end:
        flags = machine.structpages.kpageflags_range(pfn, min(KPAGEFLAGS_CHUNK, end - pfn))
        if not flags:
            return
        yield from enumerate(flags, pfn)
        pfn += len(flags)


def kpageflags_runs(machine, pfn, count, collapse=True) -> list:
    """``[start, nr_pfns, flags]`` for ``[pfn, pfn + count)``: one per pfn, or with ``collapse``
    one per run of consecutive pfns whose flags are identical."""
    runs = []
    for p, flags in iter_kpageflags(machine, pfn, count):
        if collapse and runs and runs[-1][2] == flags:
            runs[-1][1] += 1
        else:
            runs.append([p, 1, flags])
    return runs


def kpageflags_lines(machine, pfn, count):
    """:func:`format_kpageflags` of the uncollapsed runs of ``[pfn, pfn + count)``, line by line
    as they are read, so a long range streams instead of being held whole."""
    last = min(pfn + count, machine.structpages.max_dump_pfn()) - 1
    wide = max(len("pfn"), len(f"{last:#x}"))
    yield f"{'pfn':<{wide}}  {'flags':<18}  symbolic-flags"
    for p, flags in iter_kpageflags(machine, pfn, count):
        yield f"{p:<#{wide}x}  {flags:#018x}  {_names(flags)}"


def check_folio_flags(head, runs):
    """The kernel selftest's rule over the runs of a HugeTLB folio starting at pfn ``head``: the
    head has compound_head and huge, every other pfn compound_tail and huge but not compound_head.
    Returns None when the folio passes, else what the first failing pfn shows."""
    for start, count, flags in runs:
        if start == head:
            if flags & HEAD_PAGE_FLAGS != HEAD_PAGE_FLAGS:
                return f"head pfn {start:#x} has flags {flags:#x} ({_names(flags)}): compound_head and huge expected"
            if count == 1:
                continue
            start += 1
        if flags & TAIL_PAGE_FLAGS != TAIL_PAGE_FLAGS or flags & HEAD_PAGE_FLAGS == HEAD_PAGE_FLAGS:
            return f"tail pfn {start:#x} has flags {flags:#x} ({_names(flags)}): compound_tail and huge without compound_head expected"
    return None


def _names(flags):
    return ",".join(kpageflag_names(flags)) or "none"


def kpageflags_report(runs) -> list:
    """The runs as plain data: ``start``, ``count``, ``flags`` and ``names`` each."""
    return [{"start": start, "count": count, "flags": flags, "names": kpageflag_names(flags)} for start, count, flags in runs]


def format_kpageflags(runs) -> str:
    """page-types style lines: the pfn (or ``first-last`` and the count of a run), the flags in
    hex and their names."""
    rows = [("pfn", "", "flags", "symbolic-flags")]
    for start, count, flags in runs:
        span = f"{start:#x}" if count == 1 else f"{start:#x}-{start + count - 1:#x}"
        rows.append((span, "" if count == 1 else f"({count:,} pfns)", f"{flags:#018x}", _names(flags)))
    return "\n".join(columns(rows, right=(1,)))

