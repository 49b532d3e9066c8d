"""The frames kernel page tables of the vmemmap live in, and the fragments that share them.

Mirrors the page-table allocators the vmemmap's tables come from: ``memblock_alloc`` while booting
(``vmem_pte_alloc``, ``vmemmap_alloc_block_zero``), ``pte_alloc_one_kernel`` /
``__get_free_pages`` after boot, and where a table is smaller than a page, the fragment allocator
that packs several into one frame (s390 ``page_table_alloc`` / ``page_table_free`` of
``arch/s390/mm/pgalloc.c`` before d08d4e7cd6bf, v6.7: two 2 KiB page tables in one 4 KiB page).

A level's :attr:`~vmemcore.geometry.Level.alloc_bytes` (after boot) and
:attr:`~vmemcore.geometry.Level.boot_alloc_bytes` (memblock) say how much one table takes. At
least a page: the table gets its own frames. Less: it is a fragment; a frame holding a free
fragment is reused first (the kernel puts such a page at the head of ``pgtable_list``, and
memblock's top-down search finds the free half right below the table it just placed), and a frame
is freed when its last fragment is. Boot frames and runtime frames are never mixed: memblock's
leftovers are not on ``pgtable_list``.
"""

from .physmem import Use


class TableFrames:
    """Every frame holding vmemmap page tables: its size, its tables, its free fragments."""

    def __init__(self, physmem, page_shift, journal):
        self.physmem = physmem
        self.page_shift = page_shift
        self.journal = journal
        self.frames = {}  # first pfn -> (level name, nr_pages, tables it holds, fragments per frame, boot)
        self.partial = {}  # (level name, boot) -> pfns with a free fragment, the last one reused first
        self.pages = {}  # level name -> frames held

    def _record(self, undo):
        if self.journal is not None and self.journal.active:
            self.journal.record(undo)

    def _set_frame(self, pfn, value):
        old = self.frames.get(pfn)
        if value is None:
            del self.frames[pfn]
        else:
            self.frames[pfn] = value
        self._record(lambda: self._restore(self.frames, pfn, old))

    def _set_partial(self, key, pfns):
        old = self.partial.get(key)
        self.partial[key] = pfns
        self._record(lambda: self._restore(self.partial, key, old))

    def _add_pages(self, name, delta):
        self.pages[name] = self.pages.get(name, 0) + delta
        self._record(lambda: self.pages.__setitem__(name, self.pages[name] - delta))

    @staticmethod
    def _restore(mapping, key, old):
        if old is None:
            mapping.pop(key, None)
        else:
            mapping[key] = old

    def alloc(self, level, node):
        """One table of ``level`` on (or near) ``node``: the first pfn of its frame, or None when no
        frame can be had. A fragment takes a free slot of a frame first (no allocation, so it
        cannot fail), else a new frame whose other slots become free."""
        boot = self.physmem.booting
        nbytes = level.boot_alloc_bytes if boot else level.alloc_bytes
        page = 1 << self.page_shift
        if nbytes >= page:
            nr_pages = nbytes >> self.page_shift
            pfn = self.physmem.alloc(nr_pages, node, Use.PAGETABLE, align=nr_pages)
            if pfn is not None:
                self.adopt(level, pfn)
            return pfn
        key = (level.name, boot)
        free = self.partial.get(key, ())
        if free:
            pfn = free[-1]
            name, nr_pages, used, slots, _ = self.frames[pfn]
            self._set_frame(pfn, (name, nr_pages, used + 1, slots, boot))
            if used + 1 == slots:
                self._set_partial(key, free[:-1])
            return pfn
        pfn = self.physmem.alloc(1, node, Use.PAGETABLE, align=1)
        if pfn is not None:
            self._set_frame(pfn, (level.name, 1, 1, page // nbytes, boot))
            self._add_pages(level.name, 1)
            self._set_partial(key, free + (pfn,))
        return pfn

    def adopt(self, level, pfn):
        """A table of ``level`` (a page or more after boot: no fragments) in the frames at ``pfn``,
        which the caller took from the allocator for page tables."""
        boot = self.physmem.booting
        nr_pages = (level.boot_alloc_bytes if boot else level.alloc_bytes) >> self.page_shift
        self._set_frame(pfn, (level.name, nr_pages, 1, 1, boot))
        self._add_pages(level.name, nr_pages)

    def free(self, pfn):
        """Free one table held at ``pfn``: its frame goes back when no other table is left in it
        (``page_table_free``: the page is freed with its last fragment, else it goes to the head of
        ``pgtable_list`` so that its free slot is reused first)."""
        name, nr_pages, used, slots, boot = self.frames[pfn]
        key = (name, boot)
        free = self.partial.get(key, ())
        if used > 1:
            self._set_frame(pfn, (name, nr_pages, used - 1, slots, boot))
            self._set_partial(key, tuple(p for p in free if p != pfn) + (pfn,))
            return
        if pfn in free:
            self._set_partial(key, tuple(p for p in free if p != pfn))
        self._set_frame(pfn, None)
        self._add_pages(name, -nr_pages)
        self.physmem.release(pfn, nr_pages)

    def blocks(self):
        """``(first pfn, nr_pages)`` of every frame holding tables."""
        return [(pfn, frame[1]) for pfn, frame in self.frames.items()]

    def table_bytes(self, pfn) -> int:
        """Bytes one table held at ``pfn`` takes: its frames, or its share of the frame it shares."""
        _, nr_pages, _, slots, _ = self.frames[pfn]
        return (nr_pages << self.page_shift) // slots

    def tables_at(self) -> dict:
        """Tables held per frame: first pfn -> count."""
        return {pfn: frame[2] for pfn, frame in self.frames.items()}

    def snapshot(self):
        return (sorted(self.frames.items()), sorted((k, v) for k, v in self.partial.items() if v),
                sorted((k, v) for k, v in self.pages.items() if v))
