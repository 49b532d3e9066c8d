"""The riscv64 example plugin's Svnapot HugeTLB size is dated as the kernel's: 82a1a1f3bfb6 ("riscv: mm:
support Svnapot in hugetlb page") reached mainline with the RISC-V pull of the 6.4 merge window, so
``arch_hugetlb_valid_size`` accepts 64 KiB (16 PTEs, ``napot_cont_size``) from 6.4 on, with the Svnapot
extension, and never without it."""

import pytest

from vmemcore.machine import Machine
from vmemcore.units import KiB


@pytest.mark.parametrize("kernel, svnapot, has_64k", [("6.3", True, False), ("6.4", True, True), ("6.12", False, False)])
def test_svnapot_64k_hugetlb_size_from_6_4(kernel, svnapot, has_64k):
    m = Machine("riscv64", kernel=kernel, features={"svnapot": svnapot})
    sizes = {h.size: (h.level, h.contiguous) for h in m.hooks.hugepage_sizes(m)}
    assert (64 * KiB in sizes) == has_64k
    if has_64k:
        assert sizes[64 * KiB] == ("pte", 16)
