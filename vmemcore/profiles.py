"""Kernel versions as data: where kernels differ, a profile says how (kernel-facts.md §1, §3.5)."""

from attrs import frozen

from .errors import BadRequest


@frozen
class KernelProfile:
    """The behaviour of one kernel version that the engine and the plugins switch on."""

    name: str
    version: tuple
    # mm/sparse.c free_map_bootmem(): 6.12 leaves nr_memmap_boot_pages alone when a boot section's
    # memmap is freed; 6.19 and 7.1 subtract the whole section.
    boot_memmap_free_lowers_counter: bool

    def at_least(self, major: int, minor: int) -> bool:
        return self.version >= (major, minor)


PROFILES = {
    p.name: p
    for p in (
        KernelProfile("5.14", (5, 14), boot_memmap_free_lowers_counter=False),
        KernelProfile("6.1", (6, 1), boot_memmap_free_lowers_counter=False),
        KernelProfile("6.12", (6, 12), boot_memmap_free_lowers_counter=False),
        KernelProfile("6.19", (6, 19), boot_memmap_free_lowers_counter=True),
        KernelProfile("7.1", (7, 1), boot_memmap_free_lowers_counter=True),
    )
}
DEFAULT_PROFILE = "6.12"


def get_profile(name=None) -> KernelProfile:
    """The profile called ``name`` (``"6.12"`` when None)."""
    name = DEFAULT_PROFILE if name is None else str(name)
    try:
        return PROFILES[name]
    except KeyError:
        raise BadRequest(f"unknown kernel profile {name!r} (known: {', '.join(PROFILES)})") from None
