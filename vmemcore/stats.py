"""vmstat-style counters, named as the kernel names them (``mm/vmstat.c``) where it has a name."""

# Kernel-named counters (/proc/vmstat, since 6.11): pages of struct-page metadata, not frames.
NR_MEMMAP_PAGES = "nr_memmap_pages"
NR_MEMMAP_BOOT_PAGES = "nr_memmap_boot_pages"


class Counters:
    """Integer counters; changes are journaled so a failed operation leaves them as they were."""

    def __init__(self, journal=None):
        self._values = {NR_MEMMAP_PAGES: 0, NR_MEMMAP_BOOT_PAGES: 0}
        self.journal = journal

    def add(self, name, delta):
        if not delta:
            return
        existed, old = name in self._values, self._values.get(name, 0)
        self._values[name] = old + delta
        if self.journal is not None and self.journal.active:
            self.journal.record(lambda: self._values.__setitem__(name, old) if existed else self._values.pop(name))

    def __getitem__(self, name):
        return self._values.get(name, 0)

    def as_dict(self):
        return dict(sorted(self._values.items()))
